"""Corpus stores at scale: one ``rest`` store against a sharded one (built in-process and on Ray), at two sizes.

For each corpus (``--small``: one package of the corpus directory, ~1M tokens; and the whole directory) and each
build (``1-shard``: ``build_store``; ``sharded``: ``build_sharded_store`` in this process; ``ray``:
``build_sharded_store_ray`` on a local Ray of ``--ray-cpus`` CPUs), in a fresh subprocess: tokenization time and
throughput, suffix-array time, the peak memory the build added (per token), disk per token. Then the draft
latency of the 1-shard store and the Ray-built sharded one: ``RestDrafter.draft`` (budget 32, default settings) on
contexts of 64 tokens taken at random from held-out code (the interpreter's standard library, tokenized), median
and 90th percentile, and whether both gave the very same tree every time.

    python scripts/corpus_scale_bench.py --corpus DIR --small huggingface_hub --shards 8 \\
        --json bench-results/corpus-scale.json

``DIR``: the ``.py`` files of a site-packages copy (the report names the file count and bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

MODEL = "smollm2-135m"


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_build(method: str, corpus: str, out: str, shards: int, ray_cpus: int) -> dict:
    from draftless.models import load_tokenizer
    from draftless.stores.build import build_sharded_store, build_store

    tok = load_tokenizer(MODEL)
    load_before = _load()
    t0 = time.perf_counter()
    if method == "1-shard":
        r = build_store("rest", [corpus], tok, out, glob="*.py", progress=False, verbose=False)
    elif method == "sharded":
        r = build_sharded_store([corpus], tok, out, shards=shards, glob="*.py", progress=False, verbose=False)
    else:
        from draftless.stores.ray_build import build_sharded_store_ray

        r = build_sharded_store_ray([corpus], tok, out, shards=shards, glob="*.py", num_cpus=ray_cpus,
                                    verbose=False)
    wall = time.perf_counter() - t0
    return {"method": method, "n_tokens": r.n_tokens, "n_documents": r.n_documents, "tokenize_s": r.tokenize_s,
            "tokens_per_s_tokenize": r.n_tokens / r.tokenize_s, "build_s": r.build_s,
            "construct_s": r.stats.get("construct_s"), "write_s": r.stats.get("write_s"),
            "shards": r.stats.get("shards", 1), "wall_s": wall, "disk_bytes": r.disk_bytes,
            "disk_bytes_per_token": r.disk_bytes / r.n_tokens, "peak_added_bytes": r.peak_rss_bytes,
            "peak_added_bytes_per_token": None if r.peak_rss_bytes is None else r.peak_rss_bytes / r.n_tokens,
            "process_peak_bytes": _vm_hwm(), "largest_shard_tokens": r.stats.get("largest_shard_tokens"),
            "tokenize_processes": ray_cpus if method == "ray" else 1,
            "tokenizer_threads": 1 if method == "ray" else os.cpu_count(), "load_before": load_before,
            "load_after": _load()}


def heldout_contexts(tok, count: int, length: int, seed: int = 0):
    """``count`` contexts of ``length`` tokens from the standard library's code (not in the corpus)."""
    import numpy as np

    from draftless.stores.corpus import tokenize_corpus

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))[:200]
    tokens = tokenize_corpus(files, tok, progress=False).tokens
    rng = np.random.default_rng(seed)
    ends = rng.integers(length, len(tokens), count)
    return [np.asarray(tokens[e - length: e], dtype=np.int64) for e in ends]


def run_latency(one: str, sharded: str, count: int) -> dict:
    import numpy as np

    from draftless.drafters.rest import RestDrafter
    from draftless.models import load_tokenizer

    tok = load_tokenizer(MODEL)
    contexts = heldout_contexts(tok, count, 64)
    out = {"contexts": count, "context_tokens": 64, "budget": 32, "load_before": _load()}
    trees = {}
    for name, path in (("1-shard", one), ("sharded", sharded)):
        t0 = time.perf_counter()
        drafter = RestDrafter(path, tok)
        open_ms = (time.perf_counter() - t0) * 1000
        for ctx in contexts[:20]:
            drafter.draft(ctx, 32)
        times, got = [], []
        for ctx in contexts:
            t0 = time.perf_counter()
            tree = drafter.draft(ctx, 32)
            times.append((time.perf_counter() - t0) * 1000)
            got.append((tree.tokens.tolist(), tree.scores.tolist(), drafter.last_match))
        trees[name] = got
        ms = np.asarray(times)
        out[name] = {"open_ms": open_ms, "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                     "mean_ms": float(ms.mean()), "drafted": sum(len(t[0]) > 1 for t in got),
                     "mean_match": float(np.mean([t[2] for t in got])),
                     "shards": len(getattr(drafter.sa, "shards", [drafter.sa]))}
    out["identical_trees"] = sum(a == b for a, b in zip(trees["1-shard"], trees["sharded"]))
    out["load_after"] = _load()
    return out


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=False, help="directory of .py files")
    ap.add_argument("--small", default="huggingface_hub", help="a subdirectory of --corpus, the ~1M-token corpus")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/draftless-corpus-scale", help="where the stores are built")
    ap.add_argument("--sizes", default="small,full")
    ap.add_argument("--json", default=None)
    ap.add_argument("--build", nargs=5, default=None, help=argparse.SUPPRESS)  # internal: one build
    ap.add_argument("--latency", nargs=3, default=None, help=argparse.SUPPRESS)  # internal: one latency run
    args = ap.parse_args(argv)
    if args.build:
        method, corpus, out, shards, cpus = args.build
        print(json.dumps(run_build(method, corpus, out, int(shards), int(cpus))))
        return 0
    if args.latency:
        print(json.dumps(run_latency(args.latency[0], args.latency[1], int(args.latency[2]))))
        return 0
    root = Path(args.corpus)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "corpus-scale", "model": MODEL, "shards": args.shards, "ray_cpus": args.ray_cpus,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "sizes": {}}
    for size in args.sizes.split(","):
        corpus = root / args.small if size == "small" else root
        files = sorted(corpus.rglob("*.py"))
        entry = {"corpus": str(corpus.relative_to(root.parent)), "files": len(files),
                 "bytes": sum(f.stat().st_size for f in files), "builds": {}}
        for method in ("1-shard", "sharded", "ray"):
            out = work / f"{size}-{method}"
            run = _child(["--build", method, str(corpus), str(out), str(args.shards), str(args.ray_cpus)])
            entry["builds"][method] = run
            print(f"{size} {method}: {run['n_tokens']:,} tokens, tokenize {run['tokenize_s']:.1f} s "
                  f"({run['tokens_per_s_tokenize'] / 1e6:.2f}M tok/s), build {run['build_s']:.1f} s, disk "
                  f"{run['disk_bytes_per_token']:.1f} B/token, peak added {run['peak_added_bytes_per_token'] or 0:.1f} "
                  f"B/token, load {run['load_before']}", flush=True)
        entry["latency"] = _child(["--latency", str(work / f"{size}-1-shard"), str(work / f"{size}-ray"),
                                   str(args.contexts)])
        lat = entry["latency"]
        print(f"{size} latency: 1-shard {lat['1-shard']['median_ms']:.3f} ms, {lat['sharded']['shards']} shards "
              f"{lat['sharded']['median_ms']:.3f} ms, identical {lat['identical_trees']}/{lat['contexts']}",
              flush=True)
        report["sizes"][size] = entry
        if args.json:
            from draftless.atomic import atomic_file

            with atomic_file(args.json) as fh:
                json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
