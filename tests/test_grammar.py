"""Grammar-constrained generation: the processor enforces the grammar whatever order tree nodes are scored in, the
output is token-identical to ``model.generate`` with the same processor (every drafter, every tiny architecture,
single rows and batches), sampled output keeps its distribution, drafts never leave the grammar, and processors
that advance a state one call per token are refused where rows would interleave."""
import numpy as np
import pytest
import torch
from conftest import ARCHS, VOCAB
from hypothesis import given, settings
from hypothesis import strategies as st
from test_architectures import ALIBI_FAMILIES, FAMILIES, tiny_alibi_model, tiny_family_model
from test_greedy import FLAT_CURVE
from test_sampling import chi_square_pvalue

import draftless
from draftless.engine.accept import SamplingWarper
from draftless.engine.tree import DraftTree

pytest.importorskip("llguidance")

from draftless.drafters.grammar import GrammarDrafter, GrammarGuard, _legal_subtree  # noqa: E402
from draftless.drafters.ngram import NGramDrafter  # noqa: E402
from draftless.engine.protocol import RequestInfo, begin_request  # noqa: E402
from draftless.grammar import GrammarCompiler, GrammarLogitsProcessor  # noqa: E402

EOS = 1
# the tiny models' vocabulary as bytes: ids 0-2 special, then JSON punctuation, letters, digits and a few words
PIECES = ["{", "}", '"', ":", ",", " ", "a", "b", "c", "d", "e", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
          "true", "false", '"a', '":', "name", "kind", "ok", "[", "]", "ab", "cd", "null", "x", "y", "z", "na", "me",
          "ki", "nd", '{"', '",', '":"', "tr", "ue"]
TOKENS = [b"<pad>", b"</s>", b"<s>"] + [p.encode() for p in PIECES]
assert len(TOKENS) == VOCAB
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "kind", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 4}, "kind": {"enum": ["ab", "cd", "e"]},
                         "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def grammar():
    return GrammarCompiler.from_token_bytes(TOKENS, EOS).json_schema(SCHEMA, whitespace_flexible=False)


def text_of(ids) -> bytes:
    return b"".join(TOKENS[int(t)] for t in ids if int(t) != EOS)


def generate_both(model, ids, grammar, spec=None, fast=None, **kw):
    """(model.generate's output, the engine's) with a fresh grammar processor each."""
    options = dict(max_new_tokens=40, do_sample=False, eos_token_id=EOS, pad_token_id=0, **kw)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, logits_processor=[GrammarLogitsProcessor(grammar)],
                              **options)
    if fast is None:
        fast = draftless.accelerate(model, drafter=spec, cost_curve=FLAT_CURVE)
    got = fast.generate(ids, attention_mask=mask, logits_processor=[GrammarLogitsProcessor(grammar)], **options)
    return want, got


PROMPTS = [[3, 28, 29, 5], [9, 9, 9], [40, 41, 12, 13, 14, 15]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", ["none", "ngram", "grammar", "ngram+grammar", "auto"])
def test_greedy_with_a_grammar_is_identical_and_legal(tiny_models, grammar, arch, spec):
    model = tiny_models(arch)
    fast = draftless.accelerate(model, drafter=spec, cost_curve=FLAT_CURVE)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        want, got = generate_both(model, ids, grammar, fast=fast)
        assert torch.equal(got.sequences, want), (arch, spec, prompt)
        new = want[0, ids.shape[1]:]
        matcher = grammar.matcher()
        matcher.sync(new[new != EOS].tolist())  # raises when the output left the grammar
        if EOS in new.tolist():
            assert matcher.is_accepting()


def test_auto_drafts_what_the_grammar_forces(tiny_models, grammar):
    model = tiny_models("llama")
    ids = torch.tensor([PROMPTS[0]])
    plain = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE)
    guarded = draftless.accelerate(model, drafter="auto", cost_curve=FLAT_CURVE)
    want, without = generate_both(model, ids, grammar, fast=plain)
    _, with_grammar = generate_both(model, ids, grammar, fast=guarded)
    assert torch.equal(with_grammar.sequences, want)
    assert text_of(want[0, ids.shape[1]:]).startswith(b'{"name":"')
    # the keys, quotes and separators are forced: several tokens a pass where context drafting has nothing
    assert with_grammar.stats.steps < without.stats.steps
    assert with_grammar.stats.per_source["grammar"].accepted > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_batches_with_a_grammar_match_model_generate(tiny_models, grammar, arch):
    model = tiny_models(arch)
    ids = torch.tensor([[0, 0, 9, 9, 9], [3, 28, 29, 5, 7]])
    mask = (torch.arange(5)[None] >= torch.tensor([[2], [0]])).long()
    options = dict(max_new_tokens=30, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, logits_processor=[GrammarLogitsProcessor(grammar)],
                              **options)
        for spec in ("ngram", "auto"):
            got = model.generate(ids, attention_mask=mask, logits_processor=[GrammarLogitsProcessor(grammar)],
                                 custom_generate=draftless.custom_generate, drafter=spec, **options)
            assert torch.equal(got, want), (arch, spec)


def test_the_processor_scores_any_call_order_as_a_fresh_one(grammar):
    rng = np.random.default_rng(0)
    prompt = [5, 6, 7]
    legal = [43, 28, 45, 6, 7, 44]  # {"  na  me  ":"  a  b  (a JSON prefix)
    sequences = [legal[:k] for k in range(len(legal) + 1)] + [legal[:3] + [9], legal[:2]]
    proc = GrammarLogitsProcessor(grammar)
    scores = torch.randn(1, VOCAB)
    proc(torch.tensor([prompt]), scores)  # the first call: the prompt (where the output starts)
    for i in rng.permutation(len(sequences)).tolist() * 2:
        seq = prompt + sequences[i]
        fresh = GrammarLogitsProcessor(grammar)
        fresh(torch.tensor([prompt]), scores)  # its first call: the prompt
        try:
            expected = fresh(torch.tensor([seq]), scores)
        except ValueError:
            with pytest.raises(ValueError, match="left the grammar"):
                proc(torch.tensor([seq]), scores)
            continue
        assert torch.equal(proc(torch.tensor([seq]), scores), expected)


def test_a_processor_reused_for_another_prompt_is_refused(grammar):
    proc = GrammarLogitsProcessor(grammar)
    proc(torch.tensor([[5, 6, 7]]), torch.zeros(1, VOCAB))
    with pytest.raises(ValueError, match="new processor for each generate call"):
        proc(torch.tensor([[8, 6, 7, 43]]), torch.zeros(1, VOCAB))


# ---------------------------------------------------------------------------- drafts never leave the grammar
def _admitted(grammar, tokens) -> bool:
    matcher = grammar.matcher()
    try:
        matcher.sync(tokens)
    except ValueError:
        return False
    return True


paths = st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=6), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(paths, st.integers(0, 3))
def test_illegal_nodes_and_only_those_are_removed(grammar, tree_paths, prefix_len):
    base = [43, 28, 45, 6][:prefix_len]  # the output so far
    tree = DraftTree.from_paths(7, [[43, 28, 45, 6, 7][prefix_len:]] + tree_paths)
    matcher = grammar.matcher()
    matcher.sync(base)
    legal = _legal_subtree(tree, matcher, base)
    assert matcher.tokens == base
    kept = {tuple(int(legal.tokens[i]) for i in legal.path_to(n)[1:]) for n in range(1, len(legal))}
    wanted = {path for path in (tuple(int(tree.tokens[i]) for i in tree.path_to(n)[1:]) for n in range(1, len(tree)))
              if _admitted(grammar, base + list(path))}
    assert kept == wanted


def test_grammar_trees_hold_only_admitted_paths(grammar):
    for output in ([], [43], [43, 28, 45], [43, 28, 45, 6, 7, 44]):
        drafter, guard = GrammarDrafter(), GrammarGuard(NGramDrafter())
        context = np.array([5, 6, 7] + output, dtype=np.int64)
        for d in (drafter, guard):
            begin_request(d, context[:3], RequestInfo(grammar=grammar))
            tree = d.draft(context, 64)
            assert len(tree) > 1 or output == [43, 28, 45]  # inside a string value the grammar is open
            for n in range(1, len(tree)):
                path = [int(tree.tokens[i]) for i in tree.path_to(n)[1:]]
                assert _admitted(grammar, output + [t for t in path if t != EOS]), (output, path)


def test_a_tree_of_illegal_drafts_commits_only_legal_tokens(tiny_models, grammar):
    """A drafter that proposes only what the grammar forbids (``<pad>``, ``<s>``): nothing of it is committed."""

    class Forbidden:
        name, wants_hidden_states, calibrates_scores = "forbidden", False, False

        def begin(self, prompt_ids):
            pass

        def feedback(self, step):
            pass

        def draft(self, context, budget):
            return DraftTree.from_paths(int(context[-1]), [[0, 0, 0], [2, 0], [0, 2, 2]], source=self.name)

    model = tiny_models("qwen2")
    fast = draftless.accelerate(model, drafter=Forbidden(), adaptive=False, cost_curve=FLAT_CURVE)
    want, got = generate_both(model, torch.tensor([PROMPTS[1]]), grammar, fast=fast)
    assert torch.equal(got.sequences, want)
    assert got.stats.mean_accepted == 1.0  # every step committed the bonus token alone


# ---------------------------------------------------------------------------- sampling keeps its distribution
def exact_two_tokens(model, grammar, prompt, warper):
    """float64[V, V]: P(y1, y2) under the grammar-masked, warped target."""
    proc = GrammarLogitsProcessor(grammar)
    with torch.no_grad():
        p1 = warper.probs(proc(torch.tensor([prompt]), model(torch.tensor([prompt])).logits[:, -1])[0]).double()
        out = np.zeros((VOCAB, VOCAB))
        for y in torch.nonzero(p1 > 0).flatten().tolist():
            seq = torch.tensor([prompt + [y]])
            p2 = warper.probs(proc(seq, model(seq).logits[:, -1])[0]).double()
            out[y] = (p1[y] * p2).numpy()
    return out


@pytest.mark.parametrize("negative_control", [False, True])
def test_sampling_with_a_grammar_follows_the_exact_distribution(tiny_models, negative_control):
    # a grammar that leaves the first two tokens a few choices each (a JSON object's opening is forced)
    grammar = GrammarCompiler.from_token_bytes(TOKENS, EOS).regex("(ab|cd|e|a|b)[xyz]{1,3}")
    model = tiny_models("llama")
    prompt = [5, 6]
    kw = dict(temperature=1.0)
    exact = exact_two_tokens(model, grammar, prompt, SamplingWarper(**kw))
    fast = draftless.accelerate(model, drafter="auto", adaptive=False, calibrate=False, cost_curve=FLAT_CURVE)
    gen = torch.Generator().manual_seed(3)
    counts = np.zeros((VOCAB, VOCAB))
    for _ in range(600):
        # the negative control samples without the grammar: its distribution is another one
        procs = [] if negative_control else [GrammarLogitsProcessor(grammar)]
        out = fast.generate(torch.tensor([prompt]), max_new_tokens=2, do_sample=True, generator=gen,
                            logits_processor=procs, eos_token_id=EOS, pad_token_id=0, **kw)
        first, second = (list(out.new_tokens) + [EOS, EOS])[:2]
        counts[first, second] += 1
    p = chi_square_pvalue(counts, exact)
    assert (p < 1e-3) if negative_control else (p > 1e-3)


# ---------------------------------------------------------------------------- xgrammar's processor
def _xgrammar_processor():
    import json

    xgr = pytest.importorskip("xgrammar")
    info = xgr.TokenizerInfo(TOKENS, xgr.VocabType.RAW, vocab_size=VOCAB, stop_token_ids=[EOS])
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
    return lambda: xgr.contrib.hf.LogitsProcessor(compiled)


@pytest.mark.parametrize("spec", ["ngram", "auto"])
def test_xgrammar_processor_on_one_row_is_identical_and_drafted_from(tiny_models, spec):
    new_processor = _xgrammar_processor()
    model = tiny_models("llama")
    fast = draftless.accelerate(model, drafter=spec, cost_curve=FLAT_CURVE)
    options = dict(max_new_tokens=40, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[new_processor()],
                                  **options)
        got = fast.generate(ids, logits_processor=[new_processor()], **options)
        assert torch.equal(got.sequences, want), (spec, prompt)
        if spec == "auto":
            assert got.stats.per_source["grammar"].accepted > 0


def test_xgrammar_processor_on_a_batch_is_refused_naming_the_reason(tiny_models):
    new_processor = _xgrammar_processor()
    model = tiny_models("llama")
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with pytest.raises(ValueError, match="one row per generate call"):
        model.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[new_processor()],
                       max_new_tokens=8, do_sample=False, custom_generate=draftless.custom_generate, drafter="auto")


@pytest.mark.parametrize("family", sorted(FAMILIES) + sorted(ALIBI_FAMILIES))
def test_grammar_greedy_identical_on_every_other_family(grammar, family):
    """Beyond the four main architectures: every family of tests/test_architectures.py (sliding windows,
    soft-capping, MoE, multi-query attention, ALiBi verified as chains) under a grammar, with ``auto``."""
    model = tiny_alibi_model(family) if family in ALIBI_FAMILIES else tiny_family_model(family)
    fast = draftless.accelerate(model, drafter="auto", cost_curve=FLAT_CURVE)
    for prompt in PROMPTS:
        want, got = generate_both(model, torch.tensor([prompt]), grammar, fast=fast)
        assert torch.equal(got.sequences, want), (family, prompt)
