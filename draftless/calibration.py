"""Online calibration of draft scores against observed acceptance.

Each drafter scores its nodes in its own currency (match counts, recorded probabilities). The budget chooser needs
probabilities, so that "0.6" means the same from every source. The calibrator works on *conditional* scores,
``c_i = s_i / s_parent`` (the proposer's estimate that node i is accepted once its parent is), binned by the set of
sources that proposed the node, the node's depth and the raw value. Each bin keeps decayed counts of
(accepted, tried), where "tried" means the node's parent was accepted so the node had its chance. The calibrated
conditional is a Beta-smoothed rate with the raw score as prior, and the calibrated node score is the product of
calibrated conditionals along its path (so scores stay non-increasing from parent to child).

Counts decay a little every step, so a bin that was written off drifts back to its prior and gets probed again.
"""
from __future__ import annotations

import numpy as np

from .tree import DraftTree

N_BINS = 10
MAX_DEPTH_BUCKET = 8


class Calibrator:
    """``prior_weight``: pseudo-observations given to the raw score; ``decay``: per-step count multiplier."""

    def __init__(self, prior_weight: float = 4.0, decay: float = 0.995):
        self.prior_weight = prior_weight
        self.decay = decay
        self._accepted: dict[tuple, float] = {}
        self._tried: dict[tuple, float] = {}
        self._keys_of_last: list[tuple] | None = None

    def _keys(self, tree: DraftTree) -> tuple[list[tuple], np.ndarray]:
        raw = tree.scores.astype(np.float64)
        parent_scores = np.where(tree.parents >= 0, raw[np.maximum(tree.parents, 0)], 1.0)
        cond = np.clip(raw / np.maximum(parent_scores, 1e-12), 0.0, 1.0)
        depths = np.minimum(tree.depths, MAX_DEPTH_BUCKET)
        bins = np.minimum((cond * N_BINS).astype(np.int64), N_BINS - 1)
        keys = [(int(tree.source_mask[i]), tree.source_names, int(depths[i]), int(bins[i])) for i in range(len(tree))]
        return keys, cond

    def calibrate(self, tree: DraftTree) -> tuple[DraftTree, list[tuple]]:
        """The same tree with calibrated cumulative scores, and each node's bin key (pass them to ``observe``)."""
        keys, cond = self._keys(tree)
        w = self.prior_weight
        calibrated = np.ones(len(tree), dtype=np.float64)
        for i in range(1, len(tree)):
            key = keys[i]
            tried = self._tried.get(key, 0.0)
            rate = (self._accepted.get(key, 0.0) + w * cond[i]) / (tried + w)
            calibrated[i] = calibrated[tree.parents[i]] * rate
        return tree.with_scores(calibrated.astype(np.float32)), keys

    def observe(self, tree: DraftTree, keys: list[tuple], committed: np.ndarray | list[int]) -> None:
        """Record which nodes of a drafted tree the target agreed with.

        ``keys``: each node's bin key as ``calibrate`` returned them (subset alongside any pruning);
        ``committed``: the tokens the step committed after the root (accepted drafts + bonus). A node at depth d
        was *tried* when its parent lies on the committed path and the path is at least d tokens long, and
        *accepted* when its token is the path's d-th token. This counts nodes pruned before verification too:
        the bonus token says what the target wanted there.
        """
        for table in (self._accepted, self._tried):
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
            parent = tree.parents[i]
            d = depths[i]
            if on_path[parent] and d <= len(committed):
                key = keys[i]
                self._tried[key] = self._tried.get(key, 0.0) + 1.0
                if int(tree.tokens[i]) == committed[d - 1]:
                    on_path[i] = True
                    self._accepted[key] = self._accepted.get(key, 0.0) + 1.0
