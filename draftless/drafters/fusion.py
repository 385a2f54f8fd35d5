"""``a+b+c``: several drafters fused into one tree under one budget.

Each source's tree is first calibrated against that source's own observed acceptance (``Calibrator``), so scores
from different sources are comparable probabilities; the calibrated trees are then merged by longest-prefix (trie)
merging, a node proposed by several sources keeping its best score and the union of its sources, and pruned to
the budget best-first by score.
"""
from __future__ import annotations

import numpy as np

from ..engine.calibration import SourceCalibrators
from ..engine.protocol import CompositeDrafter, Drafter, StepFeedback
from ..engine.tree import DraftTree, merge_nonempty


class FusedDrafter(CompositeDrafter):
    calibrates_scores = True  # the engine adds only a neutral residual calibration on top

    def __init__(self, drafters: list[Drafter]):
        if not drafters:
            raise ValueError("a fused drafter needs at least one source")
        names = [d.name for d in drafters]
        if len(set(names)) != len(names):
            raise ValueError(f"fused sources must have distinct names, got {names}")
        self.drafters = list(drafters)
        self.name = "+".join(names)
        self.wants_hidden_states = any(d.wants_hidden_states for d in drafters)
        # nodes the engine verifies whatever their scores (a lookahead window): the union of the sources' own
        self.pinned_sources = tuple(s for d in drafters for s in getattr(d, "pinned_sources", ()))
        self._calibration = SourceCalibrators(len(drafters))

    def sources(self) -> tuple:
        return tuple(self.drafters)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        trees = [self._calibration.calibrate(i, drafter.draft(context, budget), drafter.name)
                 for i, drafter in enumerate(self.drafters)]
        return merge_nonempty(int(context[-1]), [t for t in trees if t is not None], budget, self.pinned_sources)

    def feedback(self, step: StepFeedback) -> None:
        self._calibration.observe(step.new_tokens)
        for drafter in self.drafters:
            drafter.feedback(step)
