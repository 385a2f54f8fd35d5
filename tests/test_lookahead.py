"""Lookahead decoding: the n-gram pool against an oracle, pinned window nodes in pruning and budgeting, the Jacobi
iteration converging to the target's own greedy text, and the lossless invariants (greedy identity on every tiny
architecture, sampled distribution) with the window in every pass."""
import numpy as np
import pytest
import torch
from conftest import ARCHS, VOCAB
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sampling import SamplingWarper, chi_square_pvalue, exact_two_token_distribution, sample_pairs

import draftless
from draftless.drafters.lookahead import WINDOW_SOURCE, LookaheadDrafter, window_for_curve
from draftless.drafters.spec import FUSED_SPEC, DrafterContext, auto_spec, build_drafter
from draftless.engine.budget import best_size_for_scores, best_tree_size
from draftless.engine.cost_curve import CostCurve
from draftless.engine.tree import DraftTree, merge
from draftless.index.ngram_pool import NGramPool

FLAT_CURVE = CostCurve((1, 8, 64), (1.0, 1.1, 1.5))


# ---------------------------------------------------------------------------------------------- the pool
def pool_oracle(ngrams, per_key, max_keys):
    """The pool's contents by its definition: per key the ``per_key`` most recently inserted distinct
    continuations; keys ranked by their latest insertion, the ``max_keys`` latest kept."""
    live: dict = {}  # key -> {continuation: time of its latest insertion}; an evicted key that returns starts over
    for t, g in enumerate(ngrams):
        key, cont = g[0], tuple(g[1:])
        if key not in live:
            live[key] = {}
            if len(live) > max_keys:
                oldest = min(live, key=lambda k: max(live[k].values()) if live[k] else t)
                del live[oldest]
        live[key][cont] = t
        if len(live[key]) > per_key:
            del live[key][min(live[key], key=live[key].get)]
    return {k: sorted(v, key=v.get, reverse=True) for k, v in live.items()}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=2, max_size=4), max_size=60),
       st.integers(1, 4), st.integers(1, 4))
def test_pool_matches_the_oracle(ngrams, per_key, max_keys):
    pool = NGramPool(per_key=per_key, max_keys=max_keys)
    for g in ngrams:
        pool.add(g)
    want = pool_oracle(ngrams, per_key, max_keys)
    assert pool.n_keys == len(want)
    for key, conts in want.items():
        assert pool.continuations(key) == conts
    assert len(pool) == sum(len(v) for v in want.values())


def test_pool_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one continuation"):
        NGramPool().add([3])
    with pytest.raises(ValueError, match="at least 1"):
        NGramPool(per_key=0)


# ---------------------------------------------------------------------------------------------- pinning
def node_paths(tree):
    """Every node's token path (root excluded): the set of prefixes the tree holds."""
    return {tuple(int(tree.tokens[k]) for k in tree.path_to(i)[1:]) for i in range(1, len(tree))}


def window_and_branch():
    window = DraftTree.from_chain(7, [1, 2, 3], [1e-3, 1e-3, 1e-3], WINDOW_SOURCE)
    branch = DraftTree.from_paths(7, [[4, 5], [1, 6]], [[0.9, 0.8], [0.7, 0.6]], "lookahead")
    return merge(window, branch)


def test_pruning_keeps_pinned_nodes_on_top_of_the_budget():
    tree = window_and_branch()
    pinned = tree.pinned_mask([WINDOW_SOURCE])
    assert pinned.sum() == 3  # node "1" is both: pinned
    kept = tree.subset(tree.prune_indices(2, pinned=pinned))
    assert node_paths(kept) == {(1,), (1, 2), (1, 2, 3), (4,)}
    # without the pin, the low-scored window goes first
    plain = tree.subset(tree.prune_indices(2))
    assert node_paths(plain) == {(4,)}
    # depth limits still apply to pinned nodes
    shallow = tree.subset(tree.prune_indices(1, max_depth=1, pinned=pinned))
    assert shallow.max_depth == 1


def test_no_pinned_mask_without_pinned_sources():
    assert DraftTree.from_chain(7, [1, 2], source="sam").pinned_mask([WINDOW_SOURCE]) is None


def test_budget_costs_pinned_nodes_as_extra():
    curve = CostCurve((1, 4, 8), (10.0, 14.0, 30.0))
    tree = DraftTree.from_chain(7, [1, 2, 3], [0.9, 0.8, 0.7])
    assert best_tree_size(tree, curve) == best_size_for_scores(tree.scores[1:], curve)
    # the same three nodes are worth less once four pinned nodes already fill the cheap sizes
    assert best_size_for_scores(tree.scores[1:], curve, extra_nodes=4) <= best_tree_size(tree, curve)


def test_window_width_follows_the_cost_curve():
    gpu_like = CostCurve((1, 8, 16, 32), (10.0, 10.2, 10.5, 11.0))
    cpu_like = CostCurve((1, 8, 16, 32), (10.0, 14.0, 18.6, 30.0))
    assert window_for_curve(gpu_like) == 12
    assert window_for_curve(cpu_like) == 2
    assert auto_spec(None, curve=gpu_like) == f"{FUSED_SPEC}+lookahead"
    assert auto_spec(None, curve=cpu_like) == FUSED_SPEC


def test_spec_argument_sets_the_window(tiny_models):
    model = tiny_models("llama")
    assert build_drafter("lookahead:5", DrafterContext(model=model)).window == 5
    with pytest.raises(ValueError, match="integer"):
        build_drafter("lookahead:wide", DrafterContext(model=model))


# ---------------------------------------------------------------------------------------------- the iteration
def greedy_reference(model, prompt, max_new):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                              pad_token_id=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", ["lookahead:3", "lookahead:4+sam", "lookahead:2+ngram+recycle"])
def test_greedy_identical_with_the_window_in_every_pass(tiny_models, arch, spec):
    model = tiny_models(arch)
    drafter = build_drafter(spec, DrafterContext(model=model))
    fast = draftless.accelerate(model, drafter=drafter, cost_curve=FLAT_CURVE)
    rng = np.random.default_rng(len(arch) * 7 + len(spec))
    for max_new in (1, 29, 60):
        prompt = rng.integers(0, VOCAB, int(rng.integers(1, 12))).tolist()
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=max_new)
        assert torch.equal(got.sequences, greedy_reference(model, prompt, max_new)), (spec, arch, prompt)
        assert got.stats.new_tokens == max_new


def test_every_pass_verifies_the_window_and_the_pool_fills(tiny_models):
    model = tiny_models("llama")
    drafter = LookaheadDrafter(window=4, ngram=3)
    fast = draftless.accelerate(model, drafter=drafter, cost_curve=CostCurve((1, 8), (1.0, 3.0)))
    out = fast.generate(torch.tensor([[3, 1, 4, 1, 5]]), max_new_tokens=60)
    report = drafter.report()
    # steep curve, useless scores: the pinned window survives the budget in every pass (the last few passes cut
    # it to the tokens still allowed)
    assert report["window_nodes_verified"] >= 4 * (out.stats.steps - 4)
    # the engine's count of window nodes verified; the drafter misses the last pass's (no feedback after the end)
    proposed = out.stats.per_source[WINDOW_SOURCE].proposed
    assert proposed - 4 <= report["window_nodes_verified"] <= proposed
    assert report["pool_ngrams"] > 0 and report["pool_lookups"] == out.stats.steps


def test_jacobi_window_converges_on_a_repeating_target(tiny_models):
    """A tiny random model falls into a greedy cycle; Jacobi guesses for a cycle converge, so the window and the
    pool are accepted and more than one token is committed per pass."""
    model = tiny_models("llama")
    drafter = LookaheadDrafter(window=6, ngram=3)
    fast = draftless.accelerate(model, drafter=drafter, cost_curve=FLAT_CURVE)
    out = fast.generate(torch.tensor([[2, 7, 1, 8]]), max_new_tokens=150)
    assert out.stats.mean_accepted > 1.3
    assert drafter.report()["pool_hits"] > 0


# ---------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_distribution_is_the_target_distribution_with_lookahead(tiny_models, arch):
    model = tiny_models(arch)
    kw = dict(temperature=1.0)
    exact = exact_two_token_distribution(model, SamplingWarper(**kw))
    fast = draftless.accelerate(model, drafter=LookaheadDrafter(window=3, ngram=2), adaptive=False,
                                calibrate=False)
    counts = sample_pairs(fast, 1000, seed=3, **kw)
    assert chi_square_pvalue(counts, exact) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_identical_in_a_batch_verified_together(tiny_models, arch):
    """Two left-padded rows, each with its own lookahead drafter and pinned window, in one pass per step."""
    model = tiny_models(arch)
    ids = torch.tensor([[0, 0, 0, 5, 9, 5, 9, 5], [3, 1, 4, 1, 5, 9, 2, 6]])
    mask = (torch.arange(8) >= torch.tensor([[3], [0]])).long()
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)
    fast = draftless.accelerate(model, drafter="lookahead:3+sam", cost_curve=FLAT_CURVE)
    got = fast.generate(ids, attention_mask=mask, max_new_tokens=30, pad_token_id=0)
    assert fast.last_batched
    assert torch.equal(got.sequences, want)
