"""The vLLM proposer's own time per step (``ChainDrafter.propose``), without vLLM: what it adds to every step.

A simulated engine runs R requests side by side, each 180 random tokens followed by one 40-token unit repeated to
the end, so that every step drafts a full chain (the most work per step); a step accepts the drafted prefix that
matches the text plus one token, as vLLM's verification would. Prints the median and 90th-percentile milliseconds
of one ``propose`` call over all rows, per source setting and row count:

    python scripts/proposer_overhead.py --rows 1,16 --sources sam sam,ngram
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from draftless.integrations.chains import ChainDrafter
from draftless.integrations.step_costs import StepCosts

FREE = StepCosts({0: {1: 1.0}, 8: {1: 1.0}})  # every candidate verified: the most work a step can ask for


def measure(rows: int, sources: tuple[str, ...], steps: int = 100, k: int = 8, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    repeats = 3 + steps * (k + 1) // 40  # the text never runs out
    texts = [np.concatenate([rng.integers(0, 2000, 180)] + [rng.integers(0, 2000, 40)] * repeats) for _ in range(rows)]
    drafter = ChainDrafter(k, sources=sources, costs=FREE)
    ctx = [t[:260].copy() for t in texts]  # two units in: the repeat is already there to find
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = drafter.propose(ctx)
        times.append((time.perf_counter() - start) * 1000)
        for i, (c, target) in enumerate(zip(ctx, texts)):
            hits = 0
            while hits < len(out[i]) and out[i][hits] == target[len(c) + hits]:
                hits += 1
            ctx[i] = target[: len(c) + hits + 1]
    timed = np.asarray(times[10:])
    return float(np.median(timed)), float(np.percentile(timed, 90))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,16")
    ap.add_argument("--sources", nargs="+", default=["sam", "sam,ngram"])
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args(argv)
    for spec in args.sources:
        for rows in (int(r) for r in args.rows.split(",")):
            med, p90 = measure(rows, tuple(spec.split(",")), args.steps)
            print(f"{spec:>12} rows={rows:>3}: median {med:.2f} ms a step ({med / rows:.2f} per row), p90 {p90:.2f}")


if __name__ == "__main__":
    main()
