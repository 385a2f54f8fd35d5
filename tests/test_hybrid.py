"""Model drafters (a separate draft model, the target with skipped layers) and the hybrid combinators: greedy output
identical to ``model.generate``, sampled output with the exact target distribution, a draft cache that stays in
step with the committed tokens, and refusal of a draft model with another vocabulary."""
import json

import numpy as np
import pytest
import torch
from conftest import SUBSET_IDS, VOCAB, make_tiny_model, subset_logits
from test_greedy import prompts, reference
from test_sampling import PROMPT, chi_square_pvalue, exact_two_token_distribution

import draftless
from draftless.drafters.fusion import FusedDrafter
from draftless.drafters.hybrid import HybridFusion, SelectiveDrafter, best_path_expected
from draftless.drafters.model_drafter import ModelDrafter, TokenizerMismatch
from draftless.drafters.ngram import NGramDrafter
from draftless.drafters.self_spec import SelfSpecDrafter, chain_speedup, parse_layers
from draftless.engine.accept import SamplingWarper
from draftless.engine.protocol import BaseDrafter
from draftless.engine.tree import DraftTree
from draftless.hf.compat import cache_keyword
from draftless.hf.kv_cache import new_cache
from draftless.hf.layer_view import LayerSubsetModel

SMALL = dict(topk=3, max_depth=4, max_nodes=24)


@pytest.fixture(scope="module")
def pairs():
    """(target, other tiny model of the same architecture and vocabulary) per architecture."""
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = (make_tiny_model(arch), make_tiny_model(arch, seed=1))
        return cache[arch]

    return get


def assert_greedy_identical(model, drafter, seed=3, lengths=(30, 1, 20, 40), n_prompts=4):
    fast = draftless.accelerate(model, drafter=drafter, adaptive=False, max_nodes=16)
    steps = new = 0
    for i, prompt in enumerate(prompts(seed, n=n_prompts)):
        max_new = lengths[i % len(lengths)]
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=max_new)
        assert torch.equal(got.sequences, reference(model, prompt, max_new)), prompt
        steps += got.stats.steps
        new += got.stats.new_tokens
    return new / steps


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_model_drafter_greedy_identical(pairs, arch):
    target, other = pairs(arch)
    assert_greedy_identical(target, ModelDrafter(other, target=target, **SMALL), n_prompts=3)
    # the target drafting for itself: deep trees are accepted, so compaction of accepted drafts is exercised
    assert assert_greedy_identical(target, ModelDrafter(target, target=target, **SMALL), n_prompts=3) > 2.5


@pytest.mark.parametrize("arch,skip", [("llama", [1]), ("llama", [0]), ("gemma3", [1, 2]), ("gemma3", [3])])
def test_self_spec_greedy_identical(pairs, arch, skip):
    target, _ = pairs(arch)
    drafter = SelfSpecDrafter(target, skip_layers=skip, **SMALL)
    assert drafter.skip_layers == skip and drafter.name == "self"
    assert_greedy_identical(target, drafter)


def test_layer_subset_shares_the_target_and_matches_it_with_all_layers(pairs):
    for arch in ("llama", "gemma3"):
        target, _ = pairs(arch)
        before = {k: v.clone() for k, v in target.state_dict().items()}
        n = len(target.model.layers)
        full = subset_logits(target, range(n))
        part = subset_logits(target, [0])
        with torch.no_grad():
            want = target(torch.tensor([SUBSET_IDS])).logits
        assert torch.allclose(full, want, atol=1e-5)
        assert not torch.allclose(part, want, atol=1e-2)
        assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())
        assert 0 < LayerSubsetModel(target, [0]).relative_cost() < 1


def test_draft_cache_stays_in_step_and_drafts_depend_only_on_the_context(pairs):
    """After a generation the draft cache equals a fresh prefill of the tokens it claims to hold, and a used drafter
    drafts the same tree as a fresh one."""
    target, other = pairs("llama")
    drafter = ModelDrafter(target, target=target, **SMALL)
    prompt = prompts(5)[2]
    out = draftless.accelerate(target, drafter=drafter, adaptive=False).generate(torch.tensor([prompt]),
                                                                                max_new_tokens=30)
    context = out.sequences[0].numpy()
    used = drafter.draft(context, 16)
    fresh_drafter = ModelDrafter(target, target=target, **SMALL)
    fresh_drafter.begin(context[: len(prompt)])
    fresh = fresh_drafter.draft(context, 16)
    assert used.tokens.tolist() == fresh.tokens.tolist() and used.parents.tolist() == fresh.parents.tolist()
    assert np.allclose(used.scores, fresh.scores, atol=1e-4)
    drafter._sync(context)  # settle the draft just made: back to the committed prefix
    held = drafter._cached
    assert held.tolist() == context[: len(held)].tolist() and len(held) == len(context) - 1
    with torch.no_grad():
        ref = new_cache()
        target(torch.from_numpy(held)[None], **{cache_keyword(target): ref}, use_cache=True)
    for mine, want in zip(drafter._cache.layers, ref.layers):
        assert torch.allclose(mine.keys, want.keys, atol=1e-4) and torch.allclose(mine.values, want.values, atol=1e-4)


def test_draft_cache_catches_up_in_chunks_after_skipped_steps(pairs, monkeypatch):
    """A model drafter that a selector leaves out for many steps re-feeds the missed tokens in chunks."""
    import draftless.drafters.model_drafter as md

    monkeypatch.setattr(md, "CHAIN_CHUNK", 3)
    target, _ = pairs("gemma3")  # sliding window 6: chunked catch-up across the window edge
    model = ModelDrafter(target, target=target, **SMALL)

    class Sometimes(SelectiveDrafter):
        def draft(self, context, budget):
            self.min_expected = 100.0 if len(context) % 9 == 0 else -1.0
            return super().draft(context, budget)

    sel = Sometimes(NGramDrafter(), model)
    assert_greedy_identical(target, sel, seed=4)
    assert 0 < sel.expensive_calls < sel.steps


def test_combinators_with_retrieval_are_greedy_identical(pairs):
    target, other = pairs("llama")
    for make in (
        lambda: FusedDrafter([NGramDrafter(), ModelDrafter(other, target=target, **SMALL)]),
        lambda: SelectiveDrafter(NGramDrafter(), ModelDrafter(target, target=target, **SMALL)),
        lambda: SelectiveDrafter(NGramDrafter(), ModelDrafter(other, target=target, **SMALL), min_expected=100.0),
        lambda: HybridFusion(NGramDrafter(), ModelDrafter(target, target=target, **SMALL)),
        lambda: HybridFusion(NGramDrafter(), ModelDrafter(other, target=target, **SMALL), prune_below=0.2),
        lambda: HybridFusion(NGramDrafter(), SelfSpecDrafter(target, skip_layers=[1], **SMALL)),
    ):
        drafter = make()
        assert_greedy_identical(target, drafter, seed=11, n_prompts=3)
    sel = SelectiveDrafter(NGramDrafter(), ModelDrafter(other, target=target, **SMALL), min_expected=100.0)
    assert_greedy_identical(target, sel, seed=12, n_prompts=2)
    assert sel.expensive_calls == sel.steps > 0


def test_selective_drafter_skips_the_model_when_retrieval_is_strong(pairs):
    target, _ = pairs("llama")
    sel = SelectiveDrafter(NGramDrafter(), ModelDrafter(target, target=target, **SMALL), min_expected=0.5)
    fast = draftless.accelerate(target, drafter=sel, adaptive=False)
    prompt = [5, 6, 7, 8, 9, 10, 11] * 6  # highly repetitive: the n-gram tree is strong once calibrated
    fast.generate(torch.tensor([prompt]), max_new_tokens=40)
    assert 0 < sel.expensive_calls < sel.steps
    tree = DraftTree.from_paths(1, [[2, 3], [4]], [[0.9, 0.5], [0.3]])
    assert best_path_expected(tree) == pytest.approx(1.4)


def test_hybrid_fusion_rescores_and_prunes_retrieval_nodes(pairs):
    target, _ = pairs("llama")
    context = np.asarray(prompts(5)[2], dtype=np.int64)
    with torch.no_grad():
        probs = torch.softmax(target(torch.from_numpy(context)[None]).logits[0, -1], -1)
    likely, unlikely = int(probs.argmax()), int(probs.argmin())

    class Fixed(BaseDrafter):
        name = "fixed"

        def begin(self, prompt_ids):
            pass

        def feedback(self, step):
            pass

        def draft(self, ctx, budget):
            return DraftTree.from_paths(int(ctx[-1]), [[likely], [unlikely]], [[0.5], [0.5]], source=self.name)

    model = ModelDrafter(target, target=target, **SMALL)
    hybrid = HybridFusion(Fixed(), model, prune_below=0.01)
    hybrid.begin(context)
    tree = hybrid.draft(context, 16)
    first = {int(tree.tokens[i]): i for i in range(1, len(tree)) if tree.parents[i] == 0}
    assert likely in first and unlikely not in first
    assert tree.scores[first[likely]] == pytest.approx(float(probs[likely]), rel=1e-3)
    assert set(tree.sources_of(first[likely])) == {"fixed", "model"}
    assert hybrid.seed_nodes == 2 and hybrid.seed_pruned == 1
    # the draft model grew past the retrieval leaf
    assert any(tree.parents[i] == first[likely] for i in range(len(tree)))


def test_model_drafter_sampling_follows_the_exact_target_distribution(pairs):
    """Two sampled tokens per run: the first from the root's verified logits, the second from an accepted draft
    node's (or from the root's again when the draft is rejected)."""
    target, _ = pairs("llama")
    kw = dict(temperature=0.8, top_k=8)
    exact = exact_two_token_distribution(target, SamplingWarper(**kw))
    drafter = HybridFusion(NGramDrafter(), ModelDrafter(target, target=target, topk=3, max_depth=1))
    fast = draftless.accelerate(target, drafter=drafter, adaptive=False, calibrate=False)
    gen = torch.Generator().manual_seed(2)
    counts = np.zeros((VOCAB, VOCAB))
    steps = 0
    for _ in range(1200):
        out = fast.generate(torch.tensor([PROMPT]), max_new_tokens=2, do_sample=True, generator=gen, **kw)
        counts[out.new_tokens[0], out.new_tokens[1]] += 1
        steps += out.stats.steps
    assert steps < 1.5 * 1200  # most runs took both tokens from one verification pass
    assert chi_square_pvalue(counts.sum(1), exact.sum(1)) > 1e-3
    assert chi_square_pvalue(counts, exact) > 1e-3


def test_mismatched_vocabulary_is_refused(pairs):
    target, _ = pairs("llama")
    with pytest.raises(TokenizerMismatch, match="40 tokens but the target's has 48"):
        ModelDrafter(make_tiny_model("llama", vocab=40), target=target)

    class Tok:
        def __init__(self, name, vocab):
            self.name_or_path = name
            self._vocab = vocab

        def get_vocab(self):
            return dict(self._vocab)

    a = Tok("a", {"x": 0, "y": 1, "z": 2})
    with pytest.raises(TokenizerMismatch, match="must share the target's tokenizer"):
        ModelDrafter(target, tokenizer=a, target_tokenizer=Tok("b", {"x": 0, "z": 1, "y": 2}))
    ModelDrafter(target, tokenizer=a, target_tokenizer=Tok("renamed", {"x": 0, "y": 1, "z": 2}))  # same vocab: fine


def test_self_spec_chooses_layers_by_measurement_and_caches_the_choice(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("DRAFTLESS_STATE_DIR", str(tmp_path))
    target, _ = pairs("gemma3")
    drafter = SelfSpecDrafter(target, **SMALL)
    prompt = prompts(5)[3]
    out = draftless.accelerate(target, drafter=drafter, adaptive=False).generate(torch.tensor([prompt]),
                                                                               max_new_tokens=20)
    assert torch.equal(out.sequences, reference(target, prompt, 20))
    files = list((tmp_path / "self_spec").glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["skip"] == drafter.skip_layers and 0 < len(saved["skip"]) < 4 and saved["evaluated"] > 4
    again = SelfSpecDrafter(target, **SMALL)
    again.begin(np.asarray(prompt))
    assert again.skip_layers == drafter.skip_layers


def test_auto_combines_a_configured_model_drafter_by_selection_on_steep_curves(pairs, tmp_path, monkeypatch):
    from draftless.drafters.spec import FUSED_SPEC, auto_spec
    from draftless.engine.cost_curve import CostCurve

    target, _ = pairs("llama")
    steep, flat = CostCurve((1, 8), (10.0, 25.0)), CostCurve((1, 8, 16), (10.0, 11.0, 15.0))
    assert auto_spec(target, curve=steep) == "sam" and auto_spec(target, curve=flat) == FUSED_SPEC
    assert auto_spec(target, "self", curve=steep) == "select:self"
    assert auto_spec(target, "self:1", curve=flat) == "hybrid:self:1"
    assert auto_spec(target, "drafts/small", curve=flat) == "hybrid:model:drafts/small"
    monkeypatch.setenv("DRAFTLESS_STATE_DIR", str(tmp_path))
    fast = draftless.accelerate(target, drafter="auto", draft_model="self:1", adaptive=False, max_nodes=16)
    assert isinstance(fast.drafter.inner, (SelectiveDrafter, HybridFusion))  # auto: inside its grammar guard
    for prompt in prompts(11, n=2):
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=20)
        assert torch.equal(got.sequences, reference(target, prompt, 20))


def test_costly_draft_passes_stop_the_tree_early(pairs):
    """A further level is drafted only while its frontier's cumulative probability exceeds the pass cost."""
    target, _ = pairs("llama")
    ctx = np.asarray(prompts(4, n=1)[0], dtype=np.int64)
    depths = {}
    for cost in (0.0, 0.5, 100.0):
        drafter = ModelDrafter(target, target=target, pass_cost=cost, **SMALL)
        drafter.begin(ctx)
        before = drafter.passes
        tree = drafter.draft(ctx, 24)
        depths[cost] = (tree.max_depth, drafter.passes - before)
    assert depths[100.0] == (1, 1)  # only the pass every tree needs: the root's children
    assert depths[0.0][0] == SMALL["max_depth"]
    assert depths[100.0][1] <= depths[0.5][1] <= depths[0.0][1]
    assert SelfSpecDrafter(target, skip_layers=[1], **SMALL).pass_cost == pytest.approx(
        LayerSubsetModel(target, [0]).relative_cost())


def test_helpers():
    assert parse_layers("3, 5,8-10") == [3, 5, 8, 9, 10]
    assert parse_layers("4-", n_layers=6) == [4, 5]
    assert chain_speedup(0.0, 0.5) < 1 < chain_speedup(0.9, 0.1)


def test_self_spec_is_not_worthwhile_without_a_measurement(pairs, tmp_path, monkeypatch):
    from draftless.drafters.self_spec import worthwhile

    monkeypatch.setenv("DRAFTLESS_STATE_DIR", str(tmp_path))
    target, _ = pairs("llama")
    assert not worthwhile(target)
    assert not worthwhile(pairs("gpt2")[0])  # not Llama-shaped: no layer skipping
    with pytest.raises(TypeError, match="needs a ModelDrafter"):
        HybridFusion(NGramDrafter(), NGramDrafter())
