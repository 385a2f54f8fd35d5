"""Sizing trees on the measured cost curve against the running one (``learn_costs``), interleaved per prompt.

    python scripts/learn_costs_ab.py --model smollm2-135m --chat --per-category 1
    python scripts/learn_costs_ab.py --model gemma3-270m --per-category 1

Two ``auto`` engines on one model, one with ``learn_costs=False`` (trees sized on the measured curve: each size's
fastest back-to-back forward) and one with ``learn_costs=True`` (the measured curve corrected by the engine's own
timed passes, ``engine/observed_costs.py``), run the Spec-Bench dev prompts (the first ``--per-category`` of each
category) greedily, alternating which goes first. Prints per prompt the time, passes and nodes per pass of both,
then tokens/s, the speed ratio, and both curves' t(n)/t(1). Every output must be identical (asserted).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import draftless
from draftless.app.prompts import encode_prompt
from draftless.hf.loading import load_model
from draftless.paths import bench_data_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--chat", action="store_true")
    ap.add_argument("--prompts", default=str(bench_data_dir() / "spec_bench_dev.jsonl"))
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    by_cat: dict[str, list] = {}
    for line in Path(args.prompts).read_text().splitlines():
        row = json.loads(line)
        if len(by_cat.setdefault(row["category"], [])) < args.per_category:
            by_cat[row["category"]].append(row)
    engines = {"measured": draftless.accelerate(model, drafter="auto", tokenizer=tok, learn_costs=False),
               "running": draftless.accelerate(model, drafter="auto", tokenizer=tok, learn_costs=True)}
    warm = encode_prompt(tok, "Warm-up: count from one to ten.", args.chat)
    for engine in engines.values():
        engine.generate(warm, max_new_tokens=16, do_sample=False)
    totals = {k: [0, 0.0, 0, 0] for k in engines}  # tokens, seconds, passes, nodes
    order = list(engines.items())
    i = 0
    for category, rows in by_cat.items():
        for row in rows:
            ids = encode_prompt(tok, row["turns"][0], args.chat)
            got = {}
            for key, engine in (order if i % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                out = engine.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
                seconds = time.perf_counter() - t0
                got[key] = (out.new_tokens, seconds, out.stats.steps, out.stats.tree_nodes)
                t = totals[key]
                t[0] += len(out.new_tokens)
                t[1] += seconds
                t[2] += out.stats.steps
                t[3] += out.stats.tree_nodes
            assert got["measured"][0] == got["running"][0], f"outputs differ on {category}"
            m, r = got["measured"], got["running"]
            print(f"{category:14s} measured {m[1]:.2f}s {m[2]}p {m[3] / m[2]:.1f}n | running {r[1]:.2f}s {r[2]}p "
                  f"{r[3] / r[2]:.1f}n | running vs measured {m[1] / r[1]:.3f}x", flush=True)
            i += 1
    for key, (n, s, p, nodes) in totals.items():
        print(f"{key}: {n / s:.2f} tok/s, {n / p:.2f} tokens/pass, {nodes / p:.1f} nodes/pass")
    print(f"running vs measured: {totals['measured'][1] / totals['running'][1]:.3f}x (identical outputs)")
    print("measured t(n)/t(1):", engines["running"].cost_curve.relative())
    print("running t(n)/t(1): ", engines["running"].running_cost_curve.relative())


if __name__ == "__main__":
    main()
