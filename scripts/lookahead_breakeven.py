"""At what verification cost curve would one method beat another? Read from a ``draftless bench`` report.

A method's speed over plain decoding is ``tokens per pass / (t(n) / t(1))`` at its mean tree size n. Modelling the
curve as linear, ``t(n) / t(1) = 1 + s (n - 1)``, two methods with measured tokens per pass ``A`` and mean tree sizes
``N`` are equally fast at the slope ``s* = (A_b - A_a) / (A_a (N_b - 1) - A_b (N_a - 1))``. Method ``a`` (the one
with more nodes per pass, e.g. ``lookahead``) wins on curves flatter than ``s*``. Printed per category, as the
slope and as the t(16) / t(1) it implies, next to the slope this machine measured.

    python scripts/lookahead_breakeven.py bench-results/smollm2-chat-lookahead.json --a lookahead --b sam
"""
from __future__ import annotations

import argparse
import json


def breakeven_slope(acc_a: float, size_a: float, acc_b: float, size_b: float) -> float | None:
    """The slope ``s*`` (see the module docstring); None when one method wins on every curve (or on none)."""
    denominator = acc_a * (size_b - 1.0) - acc_b * (size_a - 1.0)
    if abs(denominator) < 1e-12:
        return None
    slope = (acc_b - acc_a) / denominator
    return slope if slope >= 0 else None


def where_faster(a: dict, b: dict) -> str:
    """Where on linear curves ``a`` beats ``b``: everywhere, nowhere, or below / above a slope (and the t(16)/t(1)
    that slope means)."""
    if abs(a["mean_accepted"] - b["mean_accepted"]) < 1e-9:  # a tie on flat curves: the smaller tree wins
        return "everywhere" if a["mean_tree_size"] < b["mean_tree_size"] else "nowhere"
    s = breakeven_slope(a["mean_accepted"], a["mean_tree_size"], b["mean_accepted"], b["mean_tree_size"])
    wins_on_flat = a["mean_accepted"] > b["mean_accepted"]  # at slope 0 only tokens per pass count
    if s is None:
        return "everywhere" if wins_on_flat else "nowhere"
    side = "below" if wins_on_flat else "above"
    return f"slope {side} {s:.4f} (t(16)/t(1) {side} {1 + 15 * s:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a draftless bench JSON")
    parser.add_argument("--a", required=True, help="the method with more nodes per pass (e.g. lookahead)")
    parser.add_argument("--b", required=True, help="the method to beat (e.g. sam)")
    args = parser.parse_args()
    report = json.loads(open(args.report).read())
    methods = report["methods"]
    for name in (args.a, args.b):
        if name not in methods:
            raise SystemExit(f"{name!r} is not in the report (methods: {', '.join(methods)})")
    curve = {int(k): v for k, v in (report.get("cost_curve_ms") or {}).items()}
    upto16 = [n for n in curve if 1 < n <= 16]
    if 1 in curve and upto16:
        n = max(upto16)
        print(f"this machine's curve: t({n})/t(1) = {curve[n] / curve[1]:.2f}, a slope of "
              f"{(curve[n] / curve[1] - 1) / (n - 1):.4f} per token")
    a, b = methods[args.a], methods[args.b]
    print(f"| category | {args.a}: tokens/pass, nodes | {args.b}: tokens/pass, nodes | {args.a} is faster where |")
    print("|---|---|---|---|")
    for cat in sorted(a["per_category"]) + ["overall"]:
        ca = a if cat == "overall" else a["per_category"][cat]
        cb = b if cat == "overall" else b["per_category"].get(cat)
        if cb is None or "mean_tree_size" not in ca or "mean_tree_size" not in cb:
            continue
        print(f"| {cat} | {ca['mean_accepted']:.2f}, {ca['mean_tree_size']:.1f} | {cb['mean_accepted']:.2f}, "
              f"{cb['mean_tree_size']:.1f} | {where_faster(ca, cb)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
