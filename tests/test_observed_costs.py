"""The running cost curve: the measured curve corrected by what the engine's passes took."""
import math

import numpy as np
import pytest
import torch

import draftless
from draftless.engine.cost_curve import CostCurve
from draftless.engine.observed_costs import RATIO_CLIP, ObservedCosts

MEASURED = CostCurve((1, 2, 4, 8, 16), (10.0, 11.0, 12.0, 13.0, 20.0))


def test_before_any_pass_the_running_curve_is_the_measured_one():
    obs = ObservedCosts(MEASURED)
    assert obs.curve() is MEASURED
    assert np.allclose(obs.ratios(), 1.0)


def test_a_uniform_slowdown_scales_every_size_alike():
    obs = ObservedCosts(MEASURED)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 17))
        obs.observe(n, 1.5 * MEASURED.cost(n))
    assert np.allclose(obs.curve().ms, 1.5 * np.asarray(MEASURED.ms), rtol=1e-6)
    assert obs.curve().paths == MEASURED.paths and obs.curve().relative() == MEASURED.relative()


def test_each_size_learns_its_own_factor_and_unseen_sizes_take_the_pooled_one():
    obs = ObservedCosts(MEASURED, prior_weight=2.0, decay=1.0)
    for _ in range(50):
        obs.observe(1, 10.0)          # one-node passes cost what was measured
        obs.observe(8, 2 * 13.0)      # eight-node passes twice as much
        obs.observe(7, 2 * MEASURED.cost(7))  # counted under size 8, the smallest measured size >= 7
    r = obs.ratios()
    pooled = math.exp((50 * 0.0 + 100 * math.log(2.0)) / 150)
    assert r[0] == pytest.approx(math.exp((2 * math.log(pooled)) / 52), rel=1e-9)
    assert r[3] == pytest.approx(math.exp((100 * math.log(2.0) + 2 * math.log(pooled)) / 102), rel=1e-9)
    assert r[1] == pytest.approx(pooled) and r[4] == pytest.approx(pooled)  # never observed: the pooled factor
    # the running curve is steeper than the measured one, so the chooser buys fewer nodes
    assert obs.curve().relative()[8] > 1.8 * MEASURED.relative()[8]


def test_old_observations_fade():
    obs = ObservedCosts(MEASURED, decay=0.9)
    for _ in range(100):
        obs.observe(4, 3 * 12.0)
    for _ in range(100):
        obs.observe(4, 12.0)
    assert obs.ratios()[2] == pytest.approx(1.0, abs=0.01)


def test_outliers_are_clipped_and_nonsense_is_ignored():
    obs = ObservedCosts(MEASURED, decay=1.0)
    obs.observe(2, 1e9)
    assert obs.ratios()[1] == pytest.approx(RATIO_CLIP)
    for bad in (float("nan"), float("inf"), 0.0, -5.0):
        obs.observe(2, bad)
    assert obs.n_observed == 1
    with pytest.raises(ValueError):
        ObservedCosts(MEASURED, decay=0.0)


def test_engine_learns_only_on_request(tiny_models):
    """A curve passed in is used as given; ``learn_costs=True`` corrects it by the engine's own passes."""
    model = tiny_models("llama")
    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])
    given = draftless.accelerate(model, drafter="ngram", cost_curve=MEASURED)
    out = given.generate(ids, max_new_tokens=12, do_sample=False)
    assert given.running_cost_curve is MEASURED and not given.learn_costs
    learning = draftless.accelerate(model, drafter="ngram", cost_curve=MEASURED, learn_costs=True)
    again = learning.generate(ids, max_new_tokens=12, do_sample=False)
    assert again.new_tokens == out.new_tokens  # costs change tree sizes, never tokens
    assert learning.observed_passes == again.stats.steps and given.observed_passes == 0
    assert learning.running_cost_curve.ms != MEASURED.ms
