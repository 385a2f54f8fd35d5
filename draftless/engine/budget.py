"""Hardware-aware tree budgets: how many nodes a verification pass is worth on this model and device.

Verifying n tokens costs t(n) (a ``CostCurve``, measured in ``cost_curve.py``). A tree whose non-root scores are
calibrated probabilities of being reached and accepted yields ``1 + sum(scores)`` tokens per pass in expectation
(the 1 is the bonus token), so the best size maximises ``(1 + sum of the n-1 best scores) / (t(n) + draft time)``.
Root-only (n = 1) is always a candidate, rated ``1 / (t(1) + draft time)``: by the time the size is chosen the
draft call has been paid, so a step that falls back to root-only is still slower than plain decoding by the draft
time. The chooser bounds the loss of a useless draft at that time; it cannot remove it.
"""
from __future__ import annotations

import numpy as np

from .cost_curve import CostCurve
from .tree import DraftTree


def best_tree_size(tree: DraftTree, curve: CostCurve, draft_ms: float = 0.0, max_nodes: int | None = None,
                   min_gain: float = 1.0, extra_nodes: int = 0) -> int:
    """Node count (root included) that maximises expected tokens per millisecond for this tree.

    ``min_gain``: a tree is verified only when its expected rate beats plain decoding by this factor, a margin for
    estimation error (a speculative step that disappoints costs more than the plain step it replaced).

    Assumes scores never increase from parent to child, so the best n-node subtree is the n best-scored nodes
    (ties to the lower index, i.e. ancestors first), as ``DraftTree.prune`` picks them.

    ``extra_nodes``: nodes verified in the same pass whatever the size chosen (pinned nodes, not in ``tree``):
    every candidate size is costed with them, and their expected acceptance is not counted.
    """
    return best_size_for_scores(tree.scores[1:], curve, draft_ms, max_nodes, min_gain, extra_nodes)


def best_size_for_scores(scores: np.ndarray, curve: CostCurve, draft_ms: float = 0.0, max_nodes: int | None = None,
                         min_gain: float = 1.0, extra_nodes: int = 0) -> int:
    """``best_tree_size`` for a tree given by its non-root nodes' calibrated scores (float[n - 1]): the same rule
    for a set of nodes that need not form a tree on their own (a tree less its pinned nodes)."""
    limit = len(scores) + 1 if max_nodes is None else min(len(scores) + 1, max_nodes)
    if limit <= 1:
        return 1
    gains = np.sort(np.asarray(scores, dtype=np.float64))[::-1][: limit - 1]
    expected = 1.0 + np.concatenate([[0.0], np.cumsum(gains)])  # expected tokens for n = 1..limit
    # Only measured sizes (and the whole tree) are candidates: interpolating between measurements can hide a
    # size whose kernels are slow.
    sizes = np.asarray(sorted({s for s in curve.sizes if s <= limit} | {limit}), dtype=np.int64)
    rate = expected[sizes - 1] / (np.asarray(curve.cost(sizes + int(extra_nodes))) + draft_ms)
    best = int(np.argmax(rate))
    if sizes[best] > 1 and rate[best] < min_gain * rate[0]:
        return 1
    return int(sizes[best])
