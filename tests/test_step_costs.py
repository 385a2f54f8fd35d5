"""Step costs of a chain-verifying engine and the batch-wide choice of draft tokens, against slow oracles."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.integrations.step_costs import StepCosts, allocate, best_draft_count

GRID = {0: {1: 60.0, 4: 90.0, 16: 130.0}, 1: {1: 75.0, 4: 100.0, 16: 140.0},
        4: {1: 100.0, 4: 115.0, 16: 150.0}, 8: {1: 95.0, 4: 150.0, 16: 170.0}}


def test_costs_interpolate_the_grid_and_never_fall_with_more_drafts():
    costs = StepCosts(GRID)
    assert costs.ms(1, [0, 1, 4])[:3].tolist() == pytest.approx([60.0, 75.0, 100.0])
    assert costs.ms(1, 8)[0] == pytest.approx(100.0), "the dip at k=8 is flattened"
    assert costs.ms(1, 2)[0] == pytest.approx(75.0 + 25.0 / 3)
    assert costs.ms(4, 4)[0] == pytest.approx(100.0)           # c=4, k=1 (4 draft tokens)
    assert costs.ms(16, 64)[0] == pytest.approx(150.0)          # c=16, k=4
    assert costs.ms(16, 192)[0] == pytest.approx(170.0 + 20.0 / 64 * 64)  # past the grid: the last slope
    assert costs.ms(10, 0)[0] == pytest.approx(110.0)           # between measured row counts
    assert costs.ms(32, 0)[0] == pytest.approx(130.0 + 16 * 40.0 / 12)  # past the largest c: the last trend
    d = np.arange(0, 200)
    for rows in (1, 2, 3, 4, 7, 16, 20):
        assert np.all(np.diff(costs.ms(rows, d)) >= 0)


def test_bad_grids_and_reports_are_refused(tmp_path):
    with pytest.raises(ValueError):
        StepCosts({})
    with pytest.raises(ValueError):
        StepCosts({1: {1: 70.0}})                                # no plain step
    with pytest.raises(ValueError):
        StepCosts({0: {1: 60.0}})                                # nothing with drafts
    with pytest.raises(ValueError):
        StepCosts({0: {1: 60.0}, 1: {1: -5.0}})
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a step-cost report"):
        StepCosts.from_json(bad)
    with pytest.raises(ValueError, match="not a step-cost report"):
        StepCosts.from_json(tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"ms_per_step": {str(k): {str(c): v for c, v in row.items()}
                                                for k, row in GRID.items()}}))
    assert StepCosts.from_json(good).ms(4, 16)[0] == pytest.approx(115.0)


def test_the_default_grid_loads():
    costs = StepCosts.default()
    assert costs.ms(1, 0)[0] > 0 and np.all(np.diff(costs.ms(16, np.arange(0, 130))) >= 0)


def test_flat_costs_take_every_useful_token_and_dear_costs_none():
    flat = StepCosts({0: {1: 1.0}, 4: {1: 1.0}})
    gains = np.array([0.9, 0.5, 0.2, 0.01])
    assert best_draft_count(gains, 1, flat) == 4
    dear = StepCosts({0: {1: 1.0}, 1: {1: 10.0}})
    assert best_draft_count(gains, 1, dear) == 0
    assert best_draft_count(np.array([]), 3, flat) == 0
    # a margin keeps a step that only just pays plain: 1.5 tokens in 1.4x the time is 1.07x the plain rate
    just = StepCosts({0: {1: 1.0}, 1: {1: 1.4}})
    assert best_draft_count(np.array([0.5]), 1, just) == 1
    assert best_draft_count(np.array([0.5]), 1, just, margin=1.1) == 0


def brute_force(chain_gains: list[np.ndarray], rows: int, costs: StepCosts) -> float:
    """The best expected tokens per ms over every combination of chain prefix lengths."""
    best = 0.0
    for lengths in itertools.product(*[range(len(g) + 1) for g in chain_gains]):
        gain = sum(float(np.sum(g[:n])) for g, n in zip(chain_gains, lengths))
        best = max(best, (rows + gain) / float(costs.ms(rows, sum(lengths))[0]))
    return best


chains = st.lists(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=4), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(chains=chains, extra_rows=st.integers(0, 12))
def test_allocation_is_as_good_as_any_choice_of_prefixes(chains, extra_rows):
    costs = StepCosts(GRID)
    chain_gains = [np.minimum.accumulate(np.asarray(g, dtype=np.float64)) if g else np.zeros(0) for g in chains]
    rows = len(chain_gains) + extra_rows
    kept = allocate(chain_gains, rows, costs)
    assert len(kept) == len(chain_gains) and all(0 <= n <= len(g) for n, g in zip(kept, chain_gains))
    gain = sum(float(np.sum(g[:n])) for g, n in zip(chain_gains, kept))
    rate = (rows + gain) / float(costs.ms(rows, sum(kept))[0])
    assert rate == pytest.approx(brute_force(chain_gains, rows, costs), rel=1e-9)
