"""Hybrid drafting: cheap retrieval sources plus a draft model, combined so the model's cost is paid only where it
helps.

- ``SelectiveDrafter(cheap, expensive)``: draft with the cheap source; only when its tree is weak (the best path's
  expected number of accepted tokens, after calibration, is below ``min_expected``) also ask the expensive one
  (a ``ModelDrafter``) and merge the two trees. Retrieval is strong on repetitive text (code edits, quoting the
  prompt, lists) and weak on free prose, where a draft model still guesses well.
- ``HybridFusion(retrieval, model)``: every step the draft model scores the retrieval tree in the same forward pass
  that computes its own first level (the retrieval nodes ride along the root with a tree mask), prunes retrieval
  branches it finds unlikely, and grows its own tree from the root *and* from the surviving retrieval nodes, so a
  retrieval continuation can be extended past its end. Every node is scored by its cumulative draft probability.

Both are drafters: they nest in ``FusedDrafter`` and in each other.
"""
from __future__ import annotations

import numpy as np

from ..engine.calibration import SourceCalibrators
from ..engine.protocol import CompositeDrafter, Drafter, StepFeedback
from ..engine.tree import DraftTree, merge
from .model_drafter import ModelDrafter


def best_path_expected(tree: DraftTree) -> float:
    """max over nodes of the sum of scores along the root-to-node path (root excluded): the expected number of
    accepted tokens if only that path were verified, when scores are calibrated probabilities."""
    if len(tree) == 1:
        return 0.0
    acc = np.zeros(len(tree), dtype=np.float64)
    for i in range(1, len(tree)):
        acc[i] = acc[tree.parents[i]] + float(tree.scores[i])
    return float(acc.max())


class SelectiveDrafter(CompositeDrafter):
    """Ask ``expensive`` only when ``cheap``'s calibrated tree is weak.

    ``min_expected``: the cheap tree is strong when its best path is expected to yield at least this many accepted
    tokens (``best_path_expected`` of the calibrated tree). Both sources see every step's feedback, so a model
    drafter skipped for a while catches up on the committed tokens in its next call.
    """

    calibrates_scores = True

    def __init__(self, cheap: Drafter, expensive: Drafter, min_expected: float = 1.0):
        if cheap.name == expensive.name:
            raise ValueError("the two sources need distinct names")
        self.cheap = cheap
        self.expensive = expensive
        self.min_expected = float(min_expected)
        self.name = f"{cheap.name}|{expensive.name}"
        self.wants_hidden_states = any(d.wants_hidden_states for d in (cheap, expensive))
        self._calibration = SourceCalibrators(2)
        self.expensive_calls = 0
        self.steps = 0

    def sources(self) -> tuple:
        return (self.cheap, self.expensive)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        self.steps += 1
        trees = []
        cheap = self._calibration.calibrate(0, self.cheap.draft(context, budget), self.cheap.name)
        if cheap is not None:
            trees.append(cheap)
        self._calibration.skip(1)
        if cheap is None or best_path_expected(cheap) < self.min_expected:
            self.expensive_calls += 1
            expensive = self._calibration.calibrate(1, self.expensive.draft(context, budget), self.expensive.name)
            if expensive is not None:
                trees.append(expensive)
        if not trees:
            return DraftTree.root_only(int(context[-1]))
        return merge(*trees).prune(budget)

    def feedback(self, step: StepFeedback) -> None:
        self._calibration.observe(step.new_tokens)
        self.cheap.feedback(step)
        self.expensive.feedback(step)


class HybridFusion(CompositeDrafter):
    """A retrieval tree re-scored, pruned and extended by a draft model (see module docstring).

    ``prune_below``: a retrieval node whose draft probability given its parent is below this is dropped with its
    subtree; ``max_seed``: the most retrieval nodes (best by the retriever's own score) fed to the draft model.
    """

    def __init__(self, retrieval: Drafter, model: ModelDrafter, prune_below: float = 0.02, max_seed: int = 24):
        if not isinstance(model, ModelDrafter):
            raise TypeError(f"HybridFusion needs a ModelDrafter (model:PATH or self), got {type(model).__name__}")
        if retrieval.name == model.name:
            raise ValueError("the two sources need distinct names")
        self.retrieval = retrieval
        self.model = model
        self.prune_below = float(prune_below)
        self.max_seed = int(max_seed)
        self.name = f"{retrieval.name}~{model.name}"
        self.wants_hidden_states = bool(retrieval.wants_hidden_states)
        self.seed_nodes = 0  # retrieval nodes offered to the draft model
        self.seed_pruned = 0  # ... and dropped by it

    def sources(self) -> tuple:
        return (self.retrieval, self.model)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        seed = self.retrieval.draft(context, budget)
        if len(seed) > 1:
            seed = seed if seed.source_names else seed.with_source(self.retrieval.name)
            seed = seed.prune(self.max_seed)
        else:
            seed = None
        tree, seed_scores = self.model.grow(context, budget, seed=seed, prune_below=self.prune_below)
        if seed_scores is not None:
            self.seed_nodes += len(seed_scores) - 1
            self.seed_pruned += int((seed_scores[1:] == 0).sum())
        return tree

    def feedback(self, step: StepFeedback) -> None:
        self.retrieval.feedback(step)
        self.model.feedback(step)
