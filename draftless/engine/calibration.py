"""Online calibration of draft scores against observed acceptance.

Each drafter scores its nodes in its own currency (match counts, recorded probabilities). The budget chooser needs
probabilities, so that "0.6" means the same from every source. The calibrator works on *conditional* scores,
``c_i = s_i / s_parent`` (the proposer's estimate that node i is accepted once its parent is), and learns one
multiplier per group of nodes, a group being the set of sources that proposed the node, its depth (1 to 7, 8+) and
whether its raw conditional is low, middling or confident (acceptance is not linear in any source's raw score):

    rate(group) = (accepted + prior_weight * prior_ratio) / (sum of raw c over tried nodes + prior_weight)
    calibrated c_i = min(c_i * rate(group), 0.99),  calibrated s_i = product of calibrated c along the path

A node was *tried* when its parent lay on the committed path, so it had its chance. Few groups means the multipliers
are learned within a few steps, and the prior ratio below 1 keeps a cold start cautious (a speculative step that
fails costs more than the plain step it replaces). A group of nodes that *several* sources proposed starts from the
best of those sources' own rates instead of the cold prior: agreement is evidence, and a fresh "both" group must
not make a node look worse than either proposer alone. Counts decay a little every step, so a group that was written
off drifts back to its prior and gets probed again.
"""
from __future__ import annotations

import numpy as np

from .tree import DraftTree

MAX_DEPTH_GROUP = 8
RAW_BIN_EDGES = np.array([0.4, 0.75])  # low / middling / confident raw conditionals learn separate multipliers
MAX_CONDITIONAL = 0.99


class Calibrator:
    """``prior_ratio``/``prior_weight``: the multiplier assumed before any observation, and how many (raw-score
    weighted) observations it is worth; ``decay``: per-step multiplier of all counts."""

    def __init__(self, prior_ratio: float = 0.5, prior_weight: float = 2.0, decay: float = 0.98):
        self.prior_ratio = prior_ratio
        self.prior_weight = prior_weight
        self.decay = decay
        self._accepted: dict[tuple, float] = {}
        self._raw: dict[tuple, float] = {}

    @staticmethod
    def _conditionals(tree: DraftTree) -> np.ndarray:
        raw = tree.scores.astype(np.float64)
        parent_scores = np.where(tree.parents >= 0, raw[np.maximum(tree.parents, 0)], 1.0)
        return np.clip(raw / np.maximum(parent_scores, 1e-12), 0.0, 1.0)

    def rate(self, key: tuple) -> float:
        """The learned multiplier of a group: shrunk towards the same sources' rate over all depths, which is in
        turn shrunk towards ``prior_ratio``; so a depth seen for the first time starts from what its shallower
        siblings taught, not from the cold prior."""
        w = self.prior_weight
        pooled = self._pooled(key[0], key[1], key[3])
        return (self._accepted.get(key, 0.0) + w * pooled) / (self._raw.get(key, 0.0) + w)

    def _pooled(self, mask: int, names: tuple, raw_bin: int) -> float:
        """Rate of a source set over all depths, shrunk towards its prior: ``prior_ratio`` for one source, the best
        single proposer's pooled rate for several."""
        w = self.prior_weight
        prior = self.prior_ratio
        if mask & (mask - 1):
            bits = [1 << b for b in range(mask.bit_length()) if mask >> b & 1]
            prior = max(self._pooled(bit, names, raw_bin) for bit in bits)
        coarse = (mask, names, -1, raw_bin)
        return (self._accepted.get(coarse, 0.0) + w * prior) / (self._raw.get(coarse, 0.0) + w)

    @staticmethod
    def _coarse(key: tuple) -> tuple:
        mask, names, _depth, raw_bin = key
        return (mask, names, -1, raw_bin)

    def calibrate(self, tree: DraftTree) -> tuple[DraftTree, list[tuple]]:
        """The same tree with calibrated cumulative scores, and per node ``(group key, raw conditional)`` to hand
        back to ``observe`` (subset alongside any pruning)."""
        cond = self._conditionals(tree)
        depths = np.minimum(tree.depths, MAX_DEPTH_GROUP)
        bins = np.searchsorted(RAW_BIN_EDGES, cond)
        keys = [((int(tree.source_mask[i]), tree.source_names, int(depths[i]), int(bins[i])), float(cond[i]))
                for i in range(len(tree))]
        calibrated = np.ones(len(tree), dtype=np.float64)
        rates: dict[tuple, float] = {}
        for i in range(1, len(tree)):
            key = keys[i][0]
            r = rates.get(key)
            if r is None:
                r = rates[key] = self.rate(key)
            calibrated[i] = calibrated[tree.parents[i]] * min(cond[i] * r, MAX_CONDITIONAL)
        return tree.with_scores(calibrated.astype(np.float32)), keys

    def observe(self, tree: DraftTree, keys: list[tuple], committed: np.ndarray | list[int]) -> None:
        """Record which nodes of a drafted tree the target agreed with.

        ``keys``: what ``calibrate`` returned for this tree's nodes; ``committed``: the tokens the step committed
        after the root (accepted drafts + bonus). A node at depth d was *tried* when its parent lies on the
        committed path and the path is at least d tokens long, and *accepted* when its token is the path's d-th
        token. This counts nodes pruned before verification too: the bonus token says what the target wanted.
        """
        for table in (self._accepted, self._raw):
            for key in table:
                table[key] *= self.decay
        n = len(tree)
        if n == 1:
            return
        committed = [int(t) for t in committed]
        on_path = np.zeros(n, dtype=bool)
        on_path[0] = True
        depths = tree.depths
        for i in range(1, n):
            d = depths[i]
            if on_path[tree.parents[i]] and d <= len(committed):
                key, raw_conditional = keys[i]
                hit = int(tree.tokens[i]) == committed[d - 1]
                on_path[i] = hit
                for k in (key, self._coarse(key)):
                    self._raw[k] = self._raw.get(k, 0.0) + raw_conditional
                    if hit:
                        self._accepted[k] = self._accepted.get(k, 0.0) + 1.0


class SourceCalibrators:
    """One ``Calibrator`` per source of a combinator drafter (a fusion, a selection), and each source's last
    calibrated tree, so the step's committed tokens can be observed against what that source proposed.

    ``calibrate(i, tree, name)`` calibrates source ``i``'s tree (attributing it to ``name`` when it names no
    source) and remembers it; a root-only tree, or ``skip(i)``, leaves nothing to observe for the step.
    ``observe(committed)`` feeds every remembered tree to its calibrator (only those: a source that did not draft
    this step does not decay its counts).
    """

    def __init__(self, n_sources: int):
        self.calibrators = [Calibrator() for _ in range(n_sources)]
        self._last: list[tuple[DraftTree, list] | None] = [None] * n_sources

    def calibrate(self, i: int, tree: DraftTree, name: str) -> DraftTree | None:
        """Source ``i``'s tree with calibrated scores, or None for a root-only tree (no guess)."""
        if len(tree) == 1:
            self._last[i] = None
            return None
        tree = tree if tree.source_names else tree.with_source(name)
        tree, keys = self.calibrators[i].calibrate(tree)
        self._last[i] = (tree, keys)
        return tree

    def skip(self, i: int) -> None:
        """Source ``i`` was not asked this step."""
        self._last[i] = None

    def observe(self, committed: np.ndarray | list[int]) -> None:
        for calibrator, last in zip(self.calibrators, self._last):
            if last is not None:
                calibrator.observe(*last, committed)
