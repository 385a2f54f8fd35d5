"""The hardware-aware budget chooser on synthetic cost curves, and the calibrator on synthetic acceptance."""
import numpy as np
import pytest

from draftless.drafters.fusion import FusedDrafter
from draftless.engine.budget import best_tree_size
from draftless.engine.calibration import Calibrator
from draftless.engine.cost_curve import CostCurve
from draftless.engine.protocol import BaseDrafter
from draftless.engine.tree import DraftTree, merge


def chain(scores):
    return DraftTree.from_chain(0, list(range(1, len(scores) + 1)), scores, source="s")


def brute_force_best(tree, curve):
    """Try every n and keep the best expected-tokens-per-ms (the top-n scores make the n-node tree)."""
    s = np.sort(tree.scores[1:])[::-1]
    rates = [(1 + s[: n - 1].sum()) / curve.cost(n) for n in range(1, len(tree) + 1)]
    return int(np.argmax(rates)) + 1


CURVES = {
    "gpu-flat": CostCurve((1, 16, 64), (10.0, 10.5, 12.0)),
    "cpu-steep": CostCurve((1, 2, 4, 8, 16), (47.0, 60.0, 73.0, 85.0, 99.0)),
    "linear": CostCurve((1, 64), (1.0, 64.0)),
}


@pytest.mark.parametrize("curve_name", list(CURVES))
def test_chooser_matches_brute_force_on_every_size(curve_name):
    curve = CostCurve(tuple(range(1, 33)), tuple(float(x) for x in CURVES[curve_name].cost(np.arange(1, 33))))
    rng = np.random.default_rng(0)
    for _ in range(50):
        tree = chain(np.cumprod(rng.uniform(0.1, 1.0, int(rng.integers(1, 30)))).tolist())
        assert best_tree_size(tree, curve) == brute_force_best(tree, curve)


def test_flat_curve_takes_everything_and_linear_curve_takes_nothing():
    tree = chain([0.9, 0.8, 0.7, 0.5, 0.3, 0.2])
    assert best_tree_size(tree, CURVES["gpu-flat"]) == len(tree)
    assert best_tree_size(tree, CURVES["linear"]) == 1  # extra tokens cost a full step each: never worth it


def test_weak_guesses_on_a_steep_curve_decode_plainly():
    weak = chain([0.2, 0.05, 0.01])
    strong = chain([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65])
    curve = CURVES["cpu-steep"]
    assert best_tree_size(weak, curve) == 1
    assert best_tree_size(strong, curve) > 4


def test_a_cheaper_larger_size_is_preferred():
    """Kernels can make 4 tokens cheaper than 2: the chooser must not be fooled into picking 2."""
    curve = CostCurve((1, 2, 3, 4), (40.0, 70.0, 80.0, 65.0))
    tree = chain([0.6, 0.3, 0.1])
    assert best_tree_size(tree, curve) == 4


def test_draft_time_counts():
    curve = CostCurve((1, 8), (10.0, 12.0))
    tree = chain([0.3] * 7)
    assert best_tree_size(tree, curve, draft_ms=0.0) == 8
    assert best_tree_size(tree, curve, max_nodes=3) == 3
    # A weak tree (1.15 expected tokens for 8 nodes) is not worth t(8) = 1.2 t(1) when drafting is free ...
    weak = chain([0.15] + [1e-3] * 6)
    assert best_tree_size(weak, curve, draft_ms=0.0, min_gain=1.03) == 1
    # ... but a draft call of 100 ms is paid by every step, root-only included, so the relative cost of verifying
    # 8 nodes shrinks to 112/110 and the same tree is worth it.
    assert best_tree_size(weak, curve, draft_ms=100.0, min_gain=1.03) == 8


def test_calibrator_learns_the_true_acceptance_rate():
    """A source that claims 0.9 per token but is right 30% of the time ends up scored near 0.3."""
    rng = np.random.default_rng(1)
    cal = Calibrator(decay=1.0)
    for _ in range(400):
        tree, keys = cal.calibrate(chain([0.9, 0.81, 0.729]))
        truth = [1, 2, 3] if rng.random() < 0.3 else [7]
        cal.observe(tree, keys, truth[:1] + [0])
    tree, _ = cal.calibrate(chain([0.9, 0.81, 0.729]))
    assert tree.scores[1] == pytest.approx(0.3, abs=0.06)
    assert (np.diff(tree.scores) <= 1e-7).all()


def test_calibrator_cold_start_is_cautious_and_decays_back_to_prior():
    cal = Calibrator(prior_ratio=0.5, decay=0.9)
    tree, keys = cal.calibrate(chain([0.8]))
    assert tree.scores[1] == pytest.approx(0.4)
    for _ in range(30):  # always rejected
        t, k = cal.calibrate(chain([0.8]))
        cal.observe(t, k, [99])
    low, _ = cal.calibrate(chain([0.8]))
    assert low.scores[1] < 0.15
    for _ in range(60):  # no observations: counts decay, the prior comes back, the source is probed again
        cal.observe(DraftTree.root_only(0), [], [5])
    again, _ = cal.calibrate(chain([0.8]))
    assert again.scores[1] > 0.3


def test_calibrator_starts_an_agreement_group_from_its_best_proposer():
    """Nodes two sources agree on start from the more reliable source's rate, not the cold prior; afterwards they
    learn their own."""
    cal = Calibrator(prior_ratio=0.5, decay=1.0)
    a_only = DraftTree.from_paths(0, [[1]], [[0.6]], source="a")
    b_only = DraftTree.from_paths(0, [[2]], [[0.6]], source="b")
    for _ in range(50):  # a's guess is right every time, b's never
        t, k = cal.calibrate(merge(a_only, b_only))
        cal.observe(t, k, [1])
    both = merge(DraftTree.from_paths(0, [[5]], [[0.6]], source="a"),
                 DraftTree.from_paths(0, [[5]], [[0.6]], source="b"))
    agreed, _ = cal.calibrate(both)
    assert int(both.source_mask[1]) == 3
    assert agreed.scores[1] > 0.9  # a cold group would start at 0.6 * prior_ratio = 0.3
    for _ in range(50):  # agreed nodes turn out wrong: their own rate takes over
        t, k = cal.calibrate(both)
        cal.observe(t, k, [99])
    later, _ = cal.calibrate(both)
    assert later.scores[1] < 0.1


class FixedDrafter(BaseDrafter):
    def __init__(self, name, paths, scores):
        self.name, self.paths, self.scores = name, paths, scores

    def begin(self, prompt_ids):
        pass

    def feedback(self, step):
        pass

    def draft(self, context, budget):
        return DraftTree.from_paths(int(context[-1]), self.paths, self.scores, source=self.name)


def test_fused_drafter_is_the_merge_of_calibrated_sources_pruned_by_score():
    a = FixedDrafter("a", [[1, 2, 3], [4]], [[0.9, 0.8, 0.7], [0.3]])
    b = FixedDrafter("b", [[1, 2, 5], [6, 7]], [[0.6, 0.5, 0.4], [0.5, 0.2]])
    fused = FusedDrafter([a, b])
    context = np.array([9, 0])
    big = fused.draft(context, budget=100)
    cal = Calibrator()  # fresh calibrators apply the same prior to both sources
    want = merge(cal.calibrate(a.draft(context, 100))[0], cal.calibrate(b.draft(context, 100))[0])
    assert big.token_paths() == want.token_paths()
    np.testing.assert_allclose(big.scores, want.scores)
    assert set(big.source_names) == {"a", "b"}
    small = fused.draft(context, budget=4)
    assert len(small) == 4
    assert {tuple(p) for p in small.token_paths()} <= {tuple(p[:k]) for p in want.token_paths() for k in range(1, 4)}


def test_min_gain_margin_keeps_marginal_trees_out():
    curve = CostCurve((1, 2), (10.0, 13.0))
    tree = chain([0.32])  # expected 1.32 tokens in 13 ms: 1.5% better than plain decoding
    assert best_tree_size(tree, curve) == 2
    assert best_tree_size(tree, curve, min_gain=1.03) == 1
