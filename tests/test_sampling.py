"""Sampling is lossless: the distribution of generated tokens equals plain sampling with the same warpers.

The exact target distribution of the first two tokens is computed from the tiny model's logits; the engine's
samples (with trees that hold likely and unlikely branches) are compared against it with chi-square tests at
fixed seeds. A deliberately biased walk is run through the same test to show the test has the power to fail.
"""
import numpy as np
import pytest
import torch
from conftest import VOCAB
from scipy import stats as st

import draftless
from draftless.engine.accept import Acceptance, SamplingWarper
from draftless.engine.tree import DraftTree

PROMPT = [5, 9, 5, 9, 5]


class LikelyBranchesDrafter:
    """Proposes the two most likely first tokens, each followed by its two most likely successors, plus one random
    branch: acceptance then happens often, at varying depths and siblings."""

    name = "likely"
    wants_hidden_states = False
    calibrates_scores = False

    def __init__(self, model, seed=0):
        self.model = model
        self.rng = np.random.default_rng(seed)
        self.memo = {}  # contexts repeat across samples; the model part of a draft is deterministic

    def begin(self, prompt_ids):
        pass

    def feedback(self, step):
        pass

    def draft(self, context, budget):
        key = tuple(context.tolist())
        if key not in self.memo:
            with torch.no_grad():
                first = self.model(torch.tensor([list(key)])).logits[0, -1].topk(2).indices.tolist()
                paths = []
                for t in first:
                    nxt = self.model(torch.tensor([list(key) + [t]])).logits[0, -1].topk(2).indices.tolist()
                    paths += [[t, n] for n in nxt]
            self.memo[key] = paths
        paths = list(self.memo[key])
        paths.append(self.rng.integers(0, VOCAB, 2).tolist())
        return DraftTree.from_paths(int(context[-1]), paths, source=self.name)


def exact_two_token_distribution(model, warper):
    """float64[V, V]: P(y1, y2) under the warped target."""
    with torch.no_grad():
        p1 = warper.probs(model(torch.tensor([PROMPT])).logits[0, -1]).double()
        seqs = torch.tensor([PROMPT + [y] for y in range(VOCAB)])
        p2 = warper.probs(model(seqs).logits[:, -1]).double()
    return (p1[:, None] * p2).numpy()


def chi_square_pvalue(counts, probs, min_expected=5.0):
    """Goodness of fit of ``counts`` to ``probs`` (flattened), pooling cells with small expectation."""
    counts = counts.ravel().astype(np.float64)
    probs = probs.ravel()
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return st.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue


def sample_pairs(fast, n, seed, **kw):
    gen = torch.Generator().manual_seed(seed)
    counts = np.zeros((VOCAB, VOCAB))
    for _ in range(n):
        out = fast.generate(torch.tensor([PROMPT]), max_new_tokens=3, do_sample=True, generator=gen, **kw)
        counts[out.new_tokens[0], out.new_tokens[1]] += 1
    return counts


SETTINGS = [dict(temperature=1.0), dict(temperature=0.7, top_k=6), dict(temperature=1.3, top_p=0.8)]


@pytest.mark.parametrize("kw", SETTINGS, ids=["plain", "temp-topk", "temp-topp"])
def test_engine_samples_follow_the_exact_target_distribution(tiny_models, kw):
    model = tiny_models("llama")
    exact = exact_two_token_distribution(model, SamplingWarper(**kw))
    fast = draftless.accelerate(model, drafter=LikelyBranchesDrafter(model), adaptive=False, calibrate=False)
    counts = sample_pairs(fast, 1500, seed=1, **kw)
    assert fast_accepts_drafts(fast, kw)
    assert chi_square_pvalue(counts.sum(1), exact.sum(1)) > 1e-3
    assert chi_square_pvalue(counts, exact) > 1e-3


def fast_accepts_drafts(fast, kw):
    out = fast.generate(torch.tensor([PROMPT]), max_new_tokens=20, do_sample=True, **kw)
    return out.stats.mean_accepted > 1.0


def test_the_test_detects_a_biased_walk(tiny_models, monkeypatch):
    """Negative control: accepting a drafted child whenever it is the draw OR a coin flip says so is lossy."""
    import draftless.engine.accept as accept_mod
    import draftless.engine.step as step_mod

    model = tiny_models("llama")
    kw = dict(temperature=1.0)
    exact = exact_two_token_distribution(model, SamplingWarper(**kw))
    real = accept_mod.accept_sampling

    def biased(tree, logits, warper, generator=None):
        acc = real(tree, logits, warper, generator)
        kids = [i for i in range(1, len(tree)) if tree.parents[i] == acc.accepted[-1]]
        if kids and torch.rand(1, generator=generator).item() < 0.3:
            return Acceptance(np.append(acc.accepted, kids[0]), acc.bonus)
        return acc

    monkeypatch.setattr(step_mod, "accept_sampling", biased)
    fast = draftless.accelerate(model, drafter=LikelyBranchesDrafter(model), adaptive=False, calibrate=False)
    counts = sample_pairs(fast, 1500, seed=1, **kw)
    assert chi_square_pvalue(counts, exact) < 1e-3


def test_warpers_match_model_generate(tiny_models):
    """Our warper chain gives the distribution of model.generate(do_sample=True) with the same settings."""
    model = tiny_models("qwen2")
    kw = dict(temperature=0.8, top_k=5, top_p=0.9)
    with torch.no_grad():
        probs = SamplingWarper(**kw).probs(model(torch.tensor([PROMPT])).logits[0, -1]).double().numpy()
    torch.manual_seed(0)
    ids = torch.tensor([PROMPT] * 500)
    counts = np.zeros(VOCAB)
    for _ in range(4):
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=1,
                                 pad_token_id=0, **kw)
        np.add.at(counts, out[:, -1].numpy(), 1)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(probs))
    assert chi_square_pvalue(counts, probs) > 1e-3


def test_samples_follow_the_models_own_generation_config(tiny_models):
    """No sampling keyword at all: do_sample, temperature, top-k and a repetition penalty come from
    ``model.generation_config``, as ``model.generate`` reads them, and the penalty is applied at every tree node
    with that node's own path. The exact distribution is computed with transformers' processors in
    ``model.generate``'s order (penalty, then temperature, then top-k)."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    from draftless.hf.tiny_models import make_tiny_model

    model = make_tiny_model("llama")  # its own copy: the generation config is changed below
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.7
    model.generation_config.top_k = 6
    model.generation_config.repetition_penalty = 1.3
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7),
                                 TopKLogitsWarper(6)])
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        p1 = torch.softmax(procs(ids, model(ids).logits[:, -1].float()), -1)[0].double()
        seqs = torch.tensor([PROMPT + [y] for y in range(VOCAB)])
        p2 = torch.softmax(procs(seqs, model(seqs).logits[:, -1].float()), -1).double()
    exact = (p1[:, None] * p2).numpy()
    fast = draftless.accelerate(model, drafter=LikelyBranchesDrafter(model), adaptive=False, calibrate=False)
    gen = torch.Generator().manual_seed(2)
    counts = np.zeros((VOCAB, VOCAB))
    for _ in range(1500):
        out = fast.generate(torch.tensor([PROMPT]), max_new_tokens=3, generator=gen)
        counts[out.new_tokens[0], out.new_tokens[1]] += 1
    assert fast.generate(torch.tensor([PROMPT]), max_new_tokens=20).stats.mean_accepted > 1.0
    assert chi_square_pvalue(counts.sum(1), exact.sum(1)) > 1e-3
    assert chi_square_pvalue(counts, exact) > 1e-3


@pytest.mark.parametrize("support", [1, 7, 50, 300])
def test_draw_over_the_support_follows_the_distribution(support):
    """``accept.draw`` (multinomial over the non-zero tokens only) against the exact probabilities, with a negative
    control: the same counts are rejected against a distribution that moves 2% of the mass."""
    from draftless.engine.accept import draw

    gen = torch.Generator().manual_seed(support)
    probs = torch.zeros(5000)
    where = torch.randperm(5000, generator=gen)[:support]
    probs[where] = torch.rand(support, generator=gen) + 0.05
    probs /= probs.sum()
    n = 20000
    counts = np.bincount([draw(probs, gen) for _ in range(n)], minlength=5000)
    assert counts[probs.numpy() == 0].sum() == 0
    if support > 1:
        assert chi_square_pvalue(counts, probs.numpy()) > 1e-3
        biased = probs.clone()
        top = int(probs.argmax())
        biased[top] += 0.02
        biased /= biased.sum()
        assert chi_square_pvalue(counts, biased.numpy()) < 1e-3
    else:
        assert counts[int(where[0])] == n
    with pytest.raises(RuntimeError):
        draw(torch.zeros(10), gen)


@pytest.mark.parametrize("top_k", [1, 2, 50, 400])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_on_the_support_equals_the_warper_on_the_whole_row(top_k, top_p):
    """``TopPOnSupport`` gives what transformers' own top-p warper gives on the whole row, after its top-k warper
    (ties among the logits included: few distinct values), for a vocabulary of SmolLM2's size."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from draftless.hf.generation import processors_for_row

    hf = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)])
    ours = processors_for_row(hf, 0)
    assert type(ours[-1]).__name__ == "TopPOnSupport"
    g = torch.Generator().manual_seed(top_k)
    ids = torch.zeros((1, 3), dtype=torch.long)
    for trial in range(20):
        scores = torch.randn(1, 49_152, generator=g) * 3
        if trial % 2:
            scores = torch.round(scores)  # ties
        expected, got = hf(ids, scores.clone()), ours(ids, scores.clone())
        assert torch.equal(expected, got)


def test_top_p_on_the_support_falls_back_to_the_whole_row():
    """No -inf entry (top-p alone), a NaN, tied scores, a batch of rows, and fewer finite entries than
    ``min_tokens_to_keep``: the warper runs on the whole input, as transformers runs it."""
    from transformers import TopPLogitsWarper

    from draftless.hf.generation import TopPOnSupport

    warper = TopPLogitsWarper(0.8, min_tokens_to_keep=3)
    wrapped = TopPOnSupport(warper)
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = torch.randn(1, 1000, generator=g)
    assert torch.equal(wrapped(ids, scores), warper(ids, scores))
    batch = torch.randn(3, 1000, generator=g)
    batch[:, 10:] = float("-inf")
    assert torch.equal(wrapped(ids.expand(3, 1), batch), warper(ids.expand(3, 1), batch))
    two = torch.full((1, 1000), float("-inf"))
    two[0, [4, 7]] = torch.tensor([1.0, 2.0])
    assert torch.equal(wrapped(ids, two), warper(ids, two))
    nan = torch.full((1, 1000), float("-inf"))
    nan[0, :5] = torch.tensor([1.0, float("nan"), 0.5, 0.2, 0.1])
    assert torch.equal(torch.isnan(wrapped(ids, nan)), torch.isnan(warper(ids, nan)))
    tied = torch.full((1, 1000), float("-inf"))
    tied[0, [3, 500, 999]] = 2.0
    assert torch.equal(TopPOnSupport(TopPLogitsWarper(0.05))(ids, tied), TopPLogitsWarper(0.05)(ids, tied))
