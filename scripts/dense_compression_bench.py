"""Dense store compression: IVF-PQ stores against the uncompressed IVF-Flat store over the same keys.

Reproduce (about 8 minutes of model pass on 2 CPU cores, then a few minutes of bench)::

    .venv/bin/python scripts/dense_compression_bench.py --model smollm2-135m --max-tokens 250000 \
        --work /tmp/dense-compression --json bench-results/dense-compression.json

1. **Corpus**: GSM8K train with its calculator annotations removed (``datastores/math_store.py``'s cleaning, the
   corpus of the ``math-dense-*`` stores), tokenized with the target's tokenizer and cut to its first
   ``--max-tokens`` tokens at a document boundary; the next ``--query-tokens`` tokens (documents not in the store)
   are held out as recall queries.
2. **Keys**: one model pass in this process (``dense_build.encode_keys``, the builder's own), cached in
   ``WORK/keys.npz`` so later runs only index and bench.
3. **Stores**: the same keys indexed as ``ivf`` (IVF-Flat, the uncompressed reference) and as ``ivfpq``
   (``pq_m`` 16, the default, with and without its OPQ rotation; ``pq_m`` 8), written with ``save_index``
   to ``WORK/stores/NAME``; bytes on disk are every file of the store (tokens, PCA, index, meta) per indexed token.
4. **Recall@k** of each index (at its recorded nprobe, and an nprobe sweep for the default) against exact search
   over the uncompressed keys (``faiss.IndexFlatIP``), for the held-out queries' keys.
5. **Acceptance**: ``draftless bench``'s ``run_bench`` (``hf`` plus ``dense:STORE`` per bench store), greedy,
   ``--chat``, 128 new tokens, the 8 ``math_reasoning`` prompts of ``spec_bench_dev.jsonl`` (the prompts of the
   ``dense:math`` row of docs/benchmarks.md): mean accepted tokens per target pass. Speeds are recorded but were
   not measured on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PQ_MS = (8, 16)
BENCH_STORES = ("ivf", "ivfpq-m16", "ivfpq-m16-no-opq")
NPROBES = (8, 16, 32, 64, 128)
RECALL_K = (1, 8, 32)


def corpus_tokens(tokenizer, max_tokens: int, query_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(store tokens, held-out query tokens, separator id)`` from cleaned GSM8K train."""
    sys.path.insert(0, str(ROOT / "datastores"))
    from math_store import DEFAULT_GSM8K, write_clean_copy

    from draftless.stores.corpus import tokenize_corpus
    from draftless.stores.dense_build import cut_tokens

    clean = write_clean_copy(DEFAULT_GSM8K)
    corpus = tokenize_corpus([clean], tokenizer, fields=["question", "answer"], progress=False)
    sep = corpus.separator_id
    store = cut_tokens(corpus.tokens, max_tokens, sep)
    held = corpus.tokens[len(store) + 1: len(store) + 1 + query_tokens]
    return np.ascontiguousarray(store), np.ascontiguousarray(held), sep


def encode(model, tokens: np.ndarray, held: np.ndarray, cache: Path) -> dict:
    """Keys of the store tokens and of the held-out tokens (projected with the store's PCA), cached."""
    from draftless.index.dense_index import project
    from draftless.stores.dense_build import encode_keys, iter_hidden_states

    if cache.is_file():
        data = dict(np.load(cache))
        if np.array_equal(data["tokens"], tokens) and np.array_equal(data["held"], held):
            return data
    t0 = time.perf_counter()
    keys, components, mean = encode_keys(model, tokens, dim=96)
    encode_s = time.perf_counter() - t0
    queries = np.concatenate([project(s, components, mean) for _, s in iter_hidden_states(model, held)])
    data = {"tokens": tokens, "held": held, "keys": keys, "components": components, "mean": mean,
            "queries": queries, "encode_s": np.float64(encode_s)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    return data


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def recall(store, exact_pos: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-``k`` positions the store's search returns in its own top ``k``."""
    _, got = store.search_positions(queries, k)
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(got, exact_pos)]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=65536, help="corpus tokens in the stores")
    parser.add_argument("--query-tokens", type=int, default=2048, help="held-out tokens whose keys are queries")
    parser.add_argument("--work", default="/tmp/dense-compression", help="keys cache and the stores")
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "dense-compression.json"))
    parser.add_argument("--no-bench", action="store_true", help="stop after bytes and recall")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompts", default=None, help="default: the shipped spec_bench_dev.jsonl")
    parser.add_argument("--n-prompts", type=int, default=8, help="the first N math_reasoning prompts")
    parser.add_argument("--bench-stores", default=",".join(BENCH_STORES), help="stores to bench, comma-separated")
    args = parser.parse_args(argv)

    import faiss

    from draftless.hf.loading import load_model
    from draftless.index.dense_index import ivf_of
    from draftless.paths import bench_data_dir
    from draftless.stores.dense_build import indexed_positions, store_from_keys
    from draftless.stores.indexes import save_index
    from draftless.tokenizer_identity import tokenizer_identity

    model, tokenizer = load_model(args.model)
    work = Path(args.work)
    tokens, held, sep = corpus_tokens(tokenizer, args.max_tokens, args.query_tokens)
    data = encode(model, tokens, held, work / "keys.npz")
    keys, queries = data["keys"], data["queries"]
    positions = indexed_positions(tokens, sep)
    exact = faiss.IndexFlatIP(keys.shape[1])
    exact.add(np.ascontiguousarray(keys[positions]))
    k_max = max(RECALL_K)
    _, exact_ids = exact.search(queries, k_max)
    exact_pos = positions[exact_ids].astype(np.int64)

    configs = ({"ivf": ("ivf", {})} | {f"ivfpq-m{m}": ("ivfpq", {"pq_m": m}) for m in PQ_MS}
               | {"ivfpq-m16-no-opq": ("ivfpq", {"pq_m": 16, "opq": False})})
    stores: dict[str, dict] = {}
    opened = {}
    for name, (kind, kw) in configs.items():
        t0 = time.perf_counter()
        store = store_from_keys(tokens, keys, data["components"], data["mean"], kind, sep,
                                {"model": {"name": args.model}}, kw)
        index_s = time.perf_counter() - t0
        path = save_index(store, work / "stores" / name, tokenizer_identity(tokenizer),
                          {"kind": "dense", "index": kind, **kw, "max_tokens": args.max_tokens},
                          {"separator_id": sep})
        size = store_bytes(path)
        files = {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()}
        opened[name] = store
        stores[name] = {"index": kind, **kw, "path": str(path), "n_keys": len(store), "index_s": round(index_s, 2),
                        "disk_bytes": size, "bytes_per_indexed_token": round(size / len(positions), 2),
                        "bytes_per_corpus_token": round(size / len(tokens), 2), "files": files,
                        "search": store.search_params,
                        "recall": {f"@{k}": round(recall(store, exact_pos[:, :k], queries, k), 4) for k in RECALL_K}}
        print(f"{name}: {stores[name]['bytes_per_indexed_token']} B/indexed token, recall {stores[name]['recall']}",
              flush=True)
    default = opened["ivfpq-m16"]
    sweep = {}
    for nprobe in NPROBES:
        ivf_of(default.index).nprobe = nprobe
        sweep[str(nprobe)] = round(recall(default, exact_pos, queries, k_max), 4)
    ivf_of(default.index).nprobe = default.search_params["nprobe"]
    print(f"ivfpq-m16 recall@{k_max} by nprobe: {sweep}", flush=True)

    report = {"model": args.model, "corpus": "gsm8k_train (annotations removed)", "corpus_tokens": int(len(tokens)),
              "indexed_tokens": int(len(positions)), "query_keys": int(len(queries)), "dim": int(keys.shape[1]),
              "encode_s": float(data["encode_s"]), "stores": stores, "ivfpq_m16_recall_at_32_by_nprobe": sweep}
    if not args.no_bench:
        from draftless.app.bench import run_bench
        from draftless.app.prompts import load_prompt_file

        prompts = [p for p in load_prompt_file(args.prompts or bench_data_dir() / "spec_bench_dev.jsonl",
                                               per_category=args.n_prompts) if p.category == "math_reasoning"]
        names = [name.strip() for name in args.bench_stores.split(",") if name.strip()]
        methods = [f"dense:{stores[name]['path']}" for name in names]
        bench = run_bench(model, tokenizer, prompts, methods, max_new_tokens=args.max_new_tokens, chat=True,
                          model_name=args.model)
        for name, method in zip(names, methods):
            row = bench["methods"][method]
            stores[name]["bench"] = {key: row.get(key) for key in ("mean_accepted", "identical_to_hf", "new_tokens",
                                                                   "mean_tree_size", "per_source", "tokens_per_s",
                                                                   "draft_ms_per_step")}
            print(f"{name}: {row['mean_accepted']} tokens per pass, identical to hf: {row['identical_to_hf']}",
                  flush=True)
        report["bench"] = {"prompts": f"spec_bench_dev.jsonl math_reasoning x{len(prompts)}", "chat": True,
                           "greedy": True, "max_new_tokens": args.max_new_tokens,
                           "hf_tokens_per_s": bench["methods"]["hf"].get("tokens_per_s"),
                           "torch_threads": bench.get("torch_threads"),
                           "note": "speeds measured on a shared, busy 2-core machine: compare tokens per pass only"}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
