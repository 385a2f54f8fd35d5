"""Corpus stores at 1M, 70M and 1B tokens: build cost, disk, peak memory, draft latency and acceptance per store.

Three corpora, from one directory of ``.py`` files (``--corpus``, e.g. a copy of a site-packages tree):

- ``1M``: one package of it (``--small``);
- ``70M``: all of it;
- ``1B``: all of it ``--copies`` times, each copy's documents in another random order, written as jsonl files
  (the scale test the issue allows: the same text, so its acceptance says nothing new, only its cost does).

Builds (each in a fresh subprocess, ``--model``'s tokenizer): ``1-shard`` (``build_store``, kind ``rest``),
``sharded`` (``build_sharded_store``, ``--shards``, in this process), ``ray`` (``build_sharded_store_ray`` on a
local Ray of ``--ray-cpus`` CPUs), ``sam`` (``build_store``, kind ``sam``, at the sizes ``--sam-sizes`` names); at
``1B`` only ``ray``, with ``--big-shards`` shards. For each: tokenization time and throughput, suffix-array (or
automaton) time, wall time, disk and peak memory per token (end to end: the corpus's tokens included; for Ray the
largest shard task and the driver).

Then, per store, on ``--contexts`` contexts of 64 tokens taken at random from held-out code (the interpreter's
standard library, not in the corpus), each with the 16 tokens that really follow: the draft latency (budget 32,
default drafter settings; median and 90th percentile), the mean match length, and the acceptance against the text
(the longest path of the drafted tree that the real continuation follows, in tokens: what a target reproducing the
text would accept). Sharded trees are compared with the one-shard store's (identical when the corpus is).

    python scripts/corpus_scale_bench.py --corpus DIR --small huggingface_hub --model gemma3-270m --shards 8 \\
        --copies 15 --big-shards 16 --json bench-results/corpus-scale.json
    python scripts/bench_tables.py   # the tables in docs/datastores.md

Run it on a quiet machine: the whole run takes about half an hour here and needs ~20 GB of disk under ``--work``.
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

CONTEXT_TOKENS = 64
CONTINUATION_TOKENS = 16
BUDGET = 32


def _vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_repeated_corpus(src: Path, out: Path, copies: int, seed: int = 0) -> dict:
    """``copies`` jsonl files under ``out``, each every ``*.py`` document of ``src`` once, in a random order of its
    own (``{"text": ...}`` per line). Reuses ``out`` when its ``done.json`` says it holds the same."""
    import numpy as np

    from draftless.atomic import atomic_file
    from draftless.stores.documents import corpus_files, read_file

    files = corpus_files([src], "*.py")
    stamp = {"src": str(src), "files": len(files), "copies": copies, "seed": seed}
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("stamp") == stamp:
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    docs = ["".join(p.text for p in read_file(f)) for f in files]
    rng = np.random.default_rng(seed)
    total = 0
    for c in range(copies):
        with atomic_file(out / f"copy-{c:03d}.jsonl") as fh:
            for i in rng.permutation(len(docs)):
                fh.write(json.dumps({"text": docs[int(i)]}) + "\n")
        total += (out / f"copy-{c:03d}.jsonl").stat().st_size
    info = {"stamp": stamp, "bytes": total}
    with atomic_file(done) as fh:
        json.dump(info, fh)
    return info


# ---------------------------------------------------------------------------------------------- one build
def run_build(method: str, model: str, corpus: str, out: str, shards: int, ray_cpus: int) -> dict:
    from draftless.models import load_tokenizer
    from draftless.stores.build import build_sharded_store, build_store

    tok = load_tokenizer(model)
    glob = None if corpus.endswith("-jsonl") else "*.py"
    load_before = _load()
    t0 = time.perf_counter()
    if method in ("1-shard", "sam"):
        r = build_store("rest" if method == "1-shard" else "sam", [corpus], tok, out, glob=glob, progress=False,
                        verbose=False)
    elif method == "sharded":
        r = build_sharded_store([corpus], tok, out, shards=shards, glob=glob, progress=False, verbose=False)
    else:
        from draftless.stores.ray_build import build_sharded_store_ray

        r = build_sharded_store_ray([corpus], tok, out, shards=shards, glob=glob, num_cpus=ray_cpus,
                                    verbose=False)
    wall = time.perf_counter() - t0
    # peak memory per token, end to end: build_store's covers tokenization and build (the tokens included); the
    # in-process sharded build's already does; a Ray build's is its largest shard task (the actors stream)
    peak = r.stats.get("peak_rss_end_to_end", r.peak_rss_bytes)
    return {"method": method, "n_tokens": r.n_tokens, "n_documents": r.n_documents, "tokenize_s": r.tokenize_s,
            "tokens_per_s_tokenize": r.n_tokens / r.tokenize_s, "build_s": r.build_s,
            "construct_s": r.stats.get("construct_s"), "write_s": r.stats.get("write_s"),
            "shards": r.stats.get("shards", 1), "wall_s": wall, "disk_bytes": r.disk_bytes,
            "disk_bytes_per_token": r.disk_bytes / r.n_tokens, "peak_added_bytes": peak,
            "peak_added_bytes_per_token": None if peak is None else peak / r.n_tokens,
            "process_peak_bytes": _vm_hwm(), "largest_shard_tokens": r.stats.get("largest_shard_tokens"),
            "tokenize_processes": ray_cpus if method == "ray" else 1,
            "tokenizer_threads": 1 if method == "ray" else os.cpu_count(), "load_before": load_before,
            "load_after": _load()}


# ---------------------------------------------------------------------------------------------- lookups
def heldout_contexts(tok, count: int, seed: int = 0):
    """``count`` ``(context int64[64], continuation list[16])`` pairs from the standard library's code (not in the
    corpus)."""
    import numpy as np

    from draftless.stores.corpus import tokenize_corpus

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py"))[:200]
    tokens = tokenize_corpus(files, tok, progress=False).tokens
    rng = np.random.default_rng(seed)
    ends = rng.integers(CONTEXT_TOKENS, len(tokens) - CONTINUATION_TOKENS, count)
    return [(np.asarray(tokens[e - CONTEXT_TOKENS: e], dtype=np.int64),
             tokens[e: e + CONTINUATION_TOKENS].tolist()) for e in ends]


def accepted_along(tree, continuation: list[int]) -> int:
    """Tokens of ``continuation`` that a path of ``tree`` (root = the last context token) drafts, in order."""
    children = tree.children()
    node, n = 0, 0
    for token in continuation:
        nxt = [c for c in children[node] if int(tree.tokens[c]) == token]
        if not nxt:
            break
        node, n = nxt[0], n + 1
    return n


def _drafter(kind: str, path: str, tok):
    if kind == "sam":
        from draftless.drafters.sam import SamDrafter

        return SamDrafter(path, tok, use_dynamic=False)
    from draftless.drafters.rest import RestDrafter

    return RestDrafter(path, tok)


def run_lookups(model: str, stores: dict[str, str], count: int) -> dict:
    """Latency and acceptance of each ``{name: "kind:path"}`` store on the same held-out contexts."""
    import numpy as np

    from draftless.models import load_tokenizer

    tok = load_tokenizer(model)
    pairs = heldout_contexts(tok, count)
    out: dict = {"contexts": count, "context_tokens": CONTEXT_TOKENS, "budget": BUDGET, "load_before": _load()}
    trees: dict[str, list] = {}
    for name, spec in stores.items():
        kind, path = spec.split(":", 1)
        t0 = time.perf_counter()
        drafter = _drafter(kind, path, tok)
        open_ms = (time.perf_counter() - t0) * 1000
        for ctx, _ in pairs[:20]:  # warm the kernels and the pages the first lookups touch
            drafter.draft(ctx, BUDGET)
        times, got, accepted, matches = [], [], [], []
        for ctx, cont in pairs:
            t0 = time.perf_counter()
            tree = drafter.draft(ctx, BUDGET)
            times.append((time.perf_counter() - t0) * 1000)
            got.append((tree.tokens.tolist(), tree.parents.tolist(), tree.scores.tolist()))
            accepted.append(accepted_along(tree, cont))
            matches.append(getattr(drafter, "last_match", None))
        trees[name] = got
        ms = np.asarray(times)
        out[name] = {"kind": kind, "open_ms": open_ms, "median_ms": float(np.median(ms)),
                     "p90_ms": float(np.percentile(ms, 90)), "mean_ms": float(ms.mean()),
                     "drafted": sum(len(t[0]) > 1 for t in got),
                     "mean_match": None if None in matches else float(np.mean(matches)),
                     "mean_accepted": float(np.mean(accepted)),
                     "shards": len(getattr(getattr(drafter, "sa", None), "shards", [None]))}
    if "1-shard" in trees:
        for name in trees:
            if name not in ("1-shard", "sam"):
                out[name]["identical_trees"] = sum(a == b for a, b in zip(trees["1-shard"], trees[name]))
    out["load_after"] = _load()
    return out


# ---------------------------------------------------------------------------------------------- driver
def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _corpus_facts(corpus: Path) -> dict:
    files = sorted(corpus.rglob("*.py")) if corpus.is_dir() and not corpus.name.endswith("-jsonl") else sorted(
        corpus.glob("*.jsonl"))
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="directory of .py files (the 70M corpus)")
    ap.add_argument("--small", default="huggingface_hub", help="a subdirectory of --corpus, the ~1M-token corpus")
    ap.add_argument("--model", default="gemma3-270m", help="whose tokenizer the stores use")
    ap.add_argument("--shards", type=int, default=8, help="shards of the 1M and 70M sharded builds")
    ap.add_argument("--copies", type=int, default=15, help="copies of the 70M corpus in the 1B corpus")
    ap.add_argument("--big-shards", type=int, default=16, help="shards of the 1B build")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--sam-sizes", default="1M", help="sizes that also get a one-shard sam store")
    ap.add_argument("--contexts", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/draftless-corpus-scale", help="where corpora and stores are written")
    ap.add_argument("--sizes", default="1M,70M,1B")
    ap.add_argument("--json", default=None)
    ap.add_argument("--build", nargs=6, default=None, help=argparse.SUPPRESS)  # internal: one build
    ap.add_argument("--lookups", nargs=3, default=None, help=argparse.SUPPRESS)  # internal: one lookup run
    args = ap.parse_args(argv)
    if args.build:
        method, model, corpus, out, shards, cpus = args.build
        print(json.dumps(run_build(method, model, corpus, out, int(shards), int(cpus))))
        return 0
    if args.lookups:
        print(json.dumps(run_lookups(args.lookups[0], json.loads(args.lookups[1]), int(args.lookups[2]))))
        return 0
    if not args.corpus:
        ap.error("--corpus is required")
    root = Path(args.corpus).resolve()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "corpus-scale", "model": args.model, "shards": args.shards, "big_shards": args.big_shards,
              "copies": args.copies, "ray_cpus": args.ray_cpus, "contexts": args.contexts,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "sizes": {}}
    if args.json and Path(args.json).is_file():  # resume: keep the sizes a previous run of the same setup measured
        previous = json.loads(Path(args.json).read_text())
        if all(previous.get(k) == report[k] for k in ("model", "shards", "big_shards", "copies")):
            report["sizes"] = previous.get("sizes", {})
    for size in args.sizes.split(","):
        if size in report["sizes"]:
            print(f"{size}: kept from {args.json}", flush=True)
            continue
        if size == "1B":
            corpus = work / "corpus-1B-jsonl"
            t0 = time.perf_counter()
            write_repeated_corpus(root, corpus, args.copies)
            print(f"1B corpus written in {time.perf_counter() - t0:.0f} s", flush=True)
            methods, shards = ["ray"], args.big_shards
        else:
            corpus = root / args.small if size == "1M" else root
            methods = ["1-shard", "sharded", "ray"] + (["sam"] if size in args.sam_sizes.split(",") else [])
            shards = args.shards
        entry = {"corpus": corpus.name, **_corpus_facts(corpus), "builds": {}}
        stores = {}
        for method in methods:
            out = work / f"{size}-{method}"
            run = _child(["--build", method, args.model, str(corpus), str(out), str(shards), str(args.ray_cpus)])
            entry["builds"][method] = run
            stores[method] = f"{'sam' if method == 'sam' else 'rest'}:{out}"
            print(f"{size} {method}: {run['n_tokens']:,} tokens, tokenize {run['tokenize_s']:.1f} s "
                  f"({run['tokens_per_s_tokenize'] / 1e6:.2f}M tok/s), build {run['build_s']:.1f} s, wall "
                  f"{run['wall_s']:.0f} s, disk {run['disk_bytes_per_token']:.1f} B/token, peak "
                  f"{run['peak_added_bytes_per_token'] or 0:.1f} B/token, load {run['load_before']}", flush=True)
        entry["lookups"] = _child(["--lookups", args.model, json.dumps(stores), str(args.contexts)])
        for name in stores:
            m = entry["lookups"][name]
            print(f"{size} {name}: draft median {m['median_ms']:.3f} ms, p90 {m['p90_ms']:.3f} ms, accepted "
                  f"{m['mean_accepted']:.2f}, identical {m.get('identical_trees', '-')}", flush=True)
        report["sizes"][size] = entry
        if args.json:
            from draftless.atomic import atomic_file

            with atomic_file(args.json) as fh:
                json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
