"""What verification passes really cost, learnt from the engine's own timed passes.

The measured ``CostCurve`` keeps each size's *fastest* of a few back-to-back forwards (the most repeatable
estimate, and the right one for choosing a path). The passes the engine then runs cost more, and not by the same
factor at every size: measured on this 2-core CPU (SmolLM2, 2 threads, Spec-Bench chat prompts), one-node passes
took a median 80-97 ms against the curve's 70, eight-node passes 109-131 ms against 83, so the running curve's
t(8)/t(1) was 1.3-1.4 where the measured one says 1.19. Sizing trees on the measured curve overbuys nodes.

``ObservedCosts`` corrects the measured curve by what the passes took: per measured size (a *bucket*: a pass of n
nodes belongs to the smallest measured size >= n) a decaying geometric mean of ``observed ms / curve ms``, shrunk
towards the mean over all buckets, so a size seldom run starts from what the others show rather than from the
optimistic minimum, and every ratio tracks the machine as it drifts (``decay`` per observed pass). Ratios are
clipped to ``[1/4, 4]`` per observation, so one pass stalled by another process cannot swing the curve.
``curve()`` is the corrected ``CostCurve`` (same sizes and paths: the path choice stays the measured one).
"""
from __future__ import annotations

import math

import numpy as np

from .cost_curve import CostCurve

RATIO_CLIP = 4.0


class ObservedCosts:
    """Correction of ``measured`` by observed pass times (see the module docstring).

    - ``prior_weight``: how many observations the pooled ratio is worth in a bucket's estimate;
    - ``decay``: per-observation multiplier of every accumulated weight (0.99: about the last hundred passes).
    """

    def __init__(self, measured: CostCurve, prior_weight: float = 4.0, decay: float = 0.99):
        if not prior_weight > 0 or not 0 < decay <= 1:
            raise ValueError(f"prior_weight must be > 0 and decay in (0, 1], got {prior_weight}, {decay}")
        self.measured = measured
        self.prior_weight = float(prior_weight)
        self.decay = float(decay)
        self._sizes = np.asarray(measured.sizes, dtype=np.int64)
        self._log_sum = np.zeros(len(self._sizes))  # decayed sums of log(observed / measured) per bucket
        self._weight = np.zeros(len(self._sizes))
        self.n_observed = 0
        self._curve: CostCurve | None = measured

    def bucket(self, n: int) -> int:
        """Index of the measured size a pass of ``n`` nodes is counted under (the smallest size >= n)."""
        return min(int(np.searchsorted(self._sizes, int(n))), len(self._sizes) - 1)

    def observe(self, n: int, ms: float) -> None:
        """Record that a pass of ``n`` nodes took ``ms`` milliseconds (non-finite or non-positive times are
        ignored)."""
        expected = float(self.measured.cost(int(n)))
        if not (math.isfinite(ms) and ms > 0 and expected > 0):
            return
        ratio = min(max(ms / expected, 1.0 / RATIO_CLIP), RATIO_CLIP)
        self._log_sum *= self.decay
        self._weight *= self.decay
        i = self.bucket(n)
        self._log_sum[i] += math.log(ratio)
        self._weight[i] += 1.0
        self.n_observed += 1
        self._curve = None

    def ratios(self) -> np.ndarray:
        """float64[len(sizes)]: the current observed / measured factor per measured size (1 before any pass)."""
        total = float(self._weight.sum())
        pooled = float(self._log_sum.sum()) / total if total > 0 else 0.0
        w = self.prior_weight
        return np.exp((self._log_sum + w * pooled) / (self._weight + w))

    def curve(self) -> CostCurve:
        """The measured curve with each size's ms multiplied by its ratio (cached until the next ``observe``)."""
        if self._curve is None:
            m = self.measured
            ms = tuple(float(v) for v in np.asarray(m.ms, dtype=np.float64) * self.ratios())
            self._curve = CostCurve(m.sizes, ms, m.paths, m.by_path)
        return self._curve
