"""What the engines of one model share: the ways to run a pass, the cost curve, and what requests teach them.

One ``SpeculativeGenerator`` serves one request at a time (its drafter and request state are its own). Several
requests at once, from several threads, need several engines; ``SpeculativeGenerator.sibling()`` makes one that
shares this object with the engine it came from, so the pool of engines behind ``custom_generate`` measures the cost
curve once, packs the weights once, and learns calibration, draft time and pass costs from every request. Every
read-modify-write of the learned state happens under ``lock``; the reads a step makes between them (a draft-time
estimate, a curve) see a consistent, possibly slightly older, value.
"""
from __future__ import annotations

import threading

from ..fastpath import VerificationPaths


class SharedState:
    """Per model, for one engine or a pool of siblings.

    - ``verification``: the model's ``VerificationPaths`` (thread-safe: a path is active in its pass's thread only;
      ``compile``: built with the compiled path, see ``fastpath/compiled.py``);
    - ``cost_curve``: the measured or given ``CostCurve`` (None until measured); ``prepared_for``: the curve whose
      paths ``verification`` was prepared for; ``observed``: the ``ObservedCosts`` learnt on top of it;
    - ``calibrator``: the engine-level ``Calibrator`` (or None); ``draft_ms_estimate``: a running average of one
      draft call in ms;
    - ``lock``: held for every change of the above (re-entrant: measuring the curve runs under it)."""

    def __init__(self, model, cost_curve=None, compile: bool = False):
        self.lock = threading.RLock()
        self.verification = VerificationPaths(model, compile=compile)
        self.cost_curve = cost_curve
        self.prepared_for = None
        self.observed = None
        self.calibrator = None
        self.draft_ms_estimate = 0.0
