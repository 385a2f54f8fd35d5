"""Suffix-array builders on real tokens: time, CPU time and peak memory of each, and that they agree.

Each (builder, size) runs in a fresh subprocess on the first N tokens of a saved token array (``.npy`` int32): the
peak resident memory it reports is what the construction added above the loaded tokens (Linux: ``VmHWM`` after
``clear_refs``), and the suffix arrays are compared by sha256. Builders:

- ``divsufsort``: ``build_suffix_array(method="divsufsort")``, libdivsufsort on a dense 2-byte big-endian packing
  (the default);
- ``doubling``: ``build_suffix_array(method="doubling")``, prefix doubling in numpy (the fallback);
- ``pydivsufsort-int``: ``pydivsufsort.divsufsort`` given the int32 array itself (its own conversion of wide
  alphabets), for comparison.

    python scripts/sa_builders_bench.py --corpus DIR --tokens TOKENS.npy --sizes 10000000,50000000 \\
        --id-scale 1,5 --json bench-results/sa-builders.json

``--corpus DIR``: tokenize the ``*.py`` files of ``DIR`` with SmolLM2's tokenizer into ``TOKENS.npy`` first (skipped
when that file exists); without it, ``TOKENS.npy`` is any int32 token array.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from itertools import product

BUILDERS = ("divsufsort", "doubling", "pydivsufsort-int")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def run_one(builder: str, tokens_file: str, n: int, id_scale: int = 1) -> dict:
    """One builder on the first ``n`` tokens (ids times ``id_scale``: a wider vocabulary, same order), in this
    process (the parent runs it in a fresh one)."""
    import numpy as np

    from draftless.index.suffix_array import build_suffix_array

    tokens = np.array(np.load(tokens_file, mmap_mode="r")[:n]) * np.int32(id_scale)
    build_suffix_array(tokens[:64], method="divsufsort")  # numba kernels loaded outside the clock
    if builder == "pydivsufsort-int":
        from pydivsufsort import divsufsort

        build = divsufsort
    else:
        def build(t):
            return build_suffix_array(t, method=builder)
    before = _rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    sa = build(tokens)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    peak = _peak() - before
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    sa = np.ascontiguousarray(sa, dtype=np.int64 if sa.dtype.itemsize == 8 else np.int32)
    return {"builder": builder, "n_tokens": int(len(tokens)), "id_scale": id_scale, "load_before": os.getloadavg(),
            "max_id": int(tokens.max()), "seconds": seconds, "cpu_seconds": cpu,
            "tokens_per_s": len(tokens) / seconds, "peak_added_bytes": peak,
            "peak_bytes_per_token": peak / len(tokens), "sa_dtype": sa.dtype.str,
            "sa_sha256": hashlib.sha256(sa.astype(np.int64).tobytes()).hexdigest()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", required=True, help="int32 .npy token array")
    ap.add_argument("--sizes", default="10000000,50000000", help="comma-separated prefix lengths")
    ap.add_argument("--builders", default=",".join(BUILDERS))
    ap.add_argument("--id-scale", default="1", help="comma-separated id multipliers (5: ids up to ~246k, as a "
                    "262k vocabulary would have)")
    ap.add_argument("--json", default=None, help="write the report here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: builder,n in this process
    ap.add_argument("--corpus", default=None, help="directory whose *.py files make --tokens (when missing)")
    args = ap.parse_args(argv)
    if args.corpus and not os.path.exists(args.tokens):
        import numpy as np

        from draftless.models import load_tokenizer
        from draftless.stores.corpus import tokenize_corpus

        corpus = tokenize_corpus([args.corpus], load_tokenizer("smollm2-135m"), glob="*.py", progress=False)
        np.save(args.tokens, corpus.tokens)
        print(f"tokenized {args.corpus}: {len(corpus.tokens):,} tokens, {corpus.n_documents:,} files", flush=True)
    if args.one:
        builder, n, scale = args.one.split(",")
        print(json.dumps(run_one(builder, args.tokens, int(n), int(scale))))
        return 0
    runs = []
    sizes = [int(x) for x in args.sizes.split(",")]
    for scale, n, builder in product([int(x) for x in args.id_scale.split(",")], sizes, args.builders.split(",")):
        out = subprocess.run([sys.executable, __file__, "--tokens", args.tokens, "--one", f"{builder},{n},{scale}"],
                             check=True, capture_output=True, text=True).stdout
        run = json.loads(out.strip().splitlines()[-1])
        runs.append(run)
        print(f"{builder:>17} {run['n_tokens']:>11,} tokens (ids < {run['max_id'] + 1:,}): {run['seconds']:6.1f} s "
              f"({run['tokens_per_s'] / 1e6:.2f}M tok/s, cpu {run['cpu_seconds']:.1f} s), peak "
              f"{run['peak_added_bytes'] / 1e6:,.0f} MB = {run['peak_bytes_per_token']:.1f} B/token", flush=True)
    for key in sorted({(r["n_tokens"], r["id_scale"]) for r in runs}):
        digests = {r["sa_sha256"] for r in runs if (r["n_tokens"], r["id_scale"]) == key}
        if len(digests) != 1:
            raise SystemExit(f"builders disagree at {key[0]} tokens, id scale {key[1]}")
    load = os.getloadavg()
    report = {"benchmark": "sa-builders", "tokens_file": os.path.basename(args.tokens), "runs": runs,
              "identical": True, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "load_average_after": [round(x, 2) for x in load]}
    if args.json:
        from draftless.atomic import atomic_file

        with atomic_file(args.json) as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
