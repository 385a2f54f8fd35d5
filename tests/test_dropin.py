"""The drop-in contract: draftless, through either entry point (``fast.generate`` and ``model.generate(...,
custom_generate=draftless.custom_generate)``), returns what ``model.generate`` returns for the same call.

Greedy identity is checked on every tiny architecture with the logits processors and stopping criteria that read
the prefix (so a tree node must be scored with its own path), for spec drafters and for an oracle drafter whose
trees hold the true continuation (deep acceptance: most tokens are then committed from inside a tree). Prompts are
longer than the tiny Gemma 3's sliding window (6). Each case uses one drafter spec, chosen from the case's name by
crc32 (a fixed seed, unlike ``hash()``), to keep the suite short.
"""
import zlib

import numpy as np
import pytest
import torch
from conftest import ARCHS, VOCAB, OracleDrafter, RecordingStreamer
from test_greedy import FLAT_CURVE, drafter_from_spec
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

import draftless
from draftless.engine.tree import DraftTree

SPECS = ["ngram", "recycle", "sam+recycle", "ngram+sam+recycle", "auto"]
MAX_NEW = 24


class BanSuccessor(LogitsProcessor):
    """A user processor that reads the prefix: bans (last token + 1) mod V, and the token seen two steps back."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        rows = torch.arange(scores.shape[0])
        scores[rows, (input_ids[:, -1] + 1) % scores.shape[1]] = -float("inf")
        if input_ids.shape[1] > 1:
            scores[rows, input_ids[:, -2]] = -float("inf")
        return scores


class StopAfterToken(StoppingCriteria):
    """A user criterion: stop once ``token`` was generated ``times`` times after the prompt."""

    def __init__(self, token, prompt_len, times=2):
        self.token, self.prompt_len, self.times = token, prompt_len, times

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids[:, self.prompt_len:] == self.token).sum(dim=1) >= self.times


def prompt_for(seed, length=14):
    rng = np.random.default_rng(seed)
    motif = rng.integers(0, VOCAB, 4).tolist()
    return (motif * 5)[: length - 4] + rng.integers(0, VOCAB, 4).tolist()


def options(name, continuation, prompt_len):
    """``model.generate`` keywords of option ``name``; EOS ids come from the plain continuation so they occur."""
    eos = [continuation[6], continuation[11]]
    return {
        "plain": {},
        "repetition_penalty": dict(repetition_penalty=1.4),
        "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
        "min_new_tokens": dict(min_new_tokens=10, eos_token_id=eos),
        "bad_words_ids": dict(bad_words_ids=[[continuation[1]], [continuation[3], continuation[4]]]),
        "logits_processor": dict(logits_processor=LogitsProcessorList([BanSuccessor()])),
        "eos_list": dict(eos_token_id=eos),
        "suppress_tokens": dict(suppress_tokens=[continuation[2], continuation[5]],
                                begin_suppress_tokens=[continuation[0]]),
        "forced_eos_token_id": dict(forced_eos_token_id=continuation[1], min_length=prompt_len + 4),
        "sequence_bias": dict(sequence_bias={(continuation[3],): -20.0, (continuation[1], continuation[2]): -20.0}),
        "stopping_criteria": dict(stopping_criteria=StoppingCriteriaList([StopAfterToken(continuation[2],
                                                                                          prompt_len)])),
    }[name]


def reference(model, ids, mask=None, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids) if mask is None else mask,
                              max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0, **kw)


def spec_for(case: str) -> str:
    return SPECS[zlib.crc32(case.encode()) % len(SPECS)]


OPTIONS = ["plain", "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "bad_words_ids",
           "logits_processor", "eos_list", "suppress_tokens", "forced_eos_token_id", "sequence_bias",
           "stopping_criteria"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("option", OPTIONS)
def test_greedy_identity_through_both_entry_points(tiny_models, arch, option):
    model = tiny_models(arch)
    prompt = prompt_for(zlib.crc32(f"{arch}/{option}".encode()) % 1000)
    ids = torch.tensor([prompt])
    plain = reference(model, ids)[0, len(prompt):].tolist()
    kw = options(option, plain, len(prompt))
    want = reference(model, ids, **kw)
    spec = spec_for(f"{arch}/{option}")
    fast = draftless.accelerate(model, drafter=drafter_from_spec(spec, model), cost_curve=FLAT_CURVE)
    got = fast.generate(ids, max_new_tokens=MAX_NEW, pad_token_id=0, **kw)
    assert torch.equal(got.sequences, want), (spec, arch, option)
    # an oracle that knows this call's continuation: its trees are accepted deep, processors run on inner nodes
    oracle = OracleDrafter(want[0].tolist() + [0] * 8, VOCAB, seed=len(prompt))
    deep = draftless.accelerate(model, drafter=oracle, cost_curve=FLAT_CURVE, max_nodes=24)
    got = deep.generate(ids, max_new_tokens=MAX_NEW, pad_token_id=0, **kw)
    assert torch.equal(got.sequences, want), ("oracle", arch, option)
    if got.stats.new_tokens >= 8:  # (an EOS list can end the run after a token or two)
        assert got.stats.mean_accepted > 1.5
    with torch.no_grad():
        via_hf = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                                pad_token_id=0, custom_generate=draftless.custom_generate, drafter=spec,
                                drafter_options={"cost_curve": FLAT_CURVE}, **kw)
    assert torch.equal(via_hf, want), ("custom_generate", spec, arch, option)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batches_match_model_generate(tiny_models, arch):
    model = tiny_models(arch)
    rng = np.random.default_rng(zlib.crc32(arch.encode()) % 1000)
    rows = [prompt_for(int(rng.integers(0, 1000)), length=int(rng.integers(8, 16))) for _ in range(4)]
    for batch in (1, 2, 4):
        P = max(len(r) for r in rows[:batch])
        ids = torch.tensor([[0] * (P - len(r)) + r for r in rows[:batch]])
        mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows[:batch]])
        # EOS ids from row 0's continuation make rows finish at different steps (the rest are padded)
        eos = reference(model, ids[:1], mask[:1])[0, P + 5].item()
        for kw in ({}, dict(repetition_penalty=1.3, eos_token_id=[eos])):
            want = reference(model, ids, mask, **kw)
            spec = spec_for(f"{arch}/{batch}/{sorted(kw)}")
            fast = draftless.accelerate(model, drafter=drafter_from_spec(spec, model), cost_curve=FLAT_CURVE)
            got = fast.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=0, **kw)
            assert torch.equal(got.sequences, want), (arch, batch, kw, spec)
            assert len(fast.last_row_stats) == batch
            with torch.no_grad():
                via_hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, pad_token_id=0,
                                        do_sample=False, custom_generate=draftless.custom_generate, drafter=spec,
                                        drafter_options={"cost_curve": FLAT_CURVE}, **kw)
            assert torch.equal(via_hf, want), ("custom_generate", arch, batch, kw, spec)


REFUSED = [
    ("num_beams", dict(num_beams=2)),
    ("penalty_alpha", dict(penalty_alpha=0.6, top_k=4)),
    ("num_return_sequences", dict(num_return_sequences=2, do_sample=True)),
    ("prompt_lookup_num_tokens", dict(prompt_lookup_num_tokens=3)),
    ("num_beam_groups", dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0)),
    ("force_words_ids", dict(force_words_ids=[[3]], num_beams=2)),
    ("guidance_scale", dict(guidance_scale=1.5)),
    ("assistant_model", "model"),
    ("prefix_allowed_tokens_fn", dict(prefix_allowed_tokens_fn=lambda batch_id, ids: [1, 2])),
]


@pytest.mark.parametrize("name,kw", REFUSED, ids=[r[0] for r in REFUSED])
def test_search_changing_options_are_refused_by_name_before_any_work(tiny_models, name, kw):
    model = tiny_models("llama")
    if kw == "model":
        kw = dict(assistant_model=model)

    class Untouchable(draftless.BaseDrafter):
        name = "untouchable"

        def begin(self, prompt_ids):
            raise AssertionError("the request started")

        def draft(self, context, budget):
            raise AssertionError("the request started")

    fast = draftless.accelerate(model, drafter=Untouchable())
    with pytest.raises(draftless.UnsupportedGenerationOption, match=name):
        fast.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, **kw)
    assert fast.last_stats is None


def test_custom_generate_refuses_beams_and_keeps_its_engine(tiny_models):
    model = tiny_models("qwen2")
    ids = torch.tensor([prompt_for(3)])
    with pytest.raises(draftless.UnsupportedGenerationOption, match="num_beams"):
        model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=2, max_new_tokens=4,
                       custom_generate=draftless.custom_generate, drafter="ngram")
    engines = []
    for _ in range(2):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                       custom_generate=draftless.custom_generate, drafter="ngram")
        engines.append(draftless.custom_generate.engine_for(model, "ngram"))
    assert engines[0] is engines[1] and engines[0].last_stats.new_tokens == 6
    assert engines[0].model is model and not hasattr(model, "_draftless")
    draftless.custom_generate.release(model)
    assert draftless.custom_generate.engine_for(model, "ngram") is not engines[0]
    draftless.custom_generate.release(model)


class BrokenDrafter(draftless.BaseDrafter):
    """Returns one kind of broken tree (bypassing ``DraftTree``'s constructors, as a buggy drafter would)."""

    name = "broken"

    def __init__(self, how):
        self.how = how

    def draft(self, context, budget):
        root = int(context[-1])
        tokens, parents = np.array([root, 3, 4], np.int64), np.array([-1, 0, 1], np.int32)
        if self.how == "root_parent":
            parents[0] = 0
        elif self.how == "forward_parent":
            parents[1] = 2
        elif self.how == "vocab":
            tokens[2] = VOCAB + 5
        elif self.how == "negative_token":
            tokens[1] = -1
        elif self.how == "root":
            tokens[0] = (root + 1) % VOCAB
        elif self.how == "misaligned":
            parents = parents[:2]
        return DraftTree(tokens, parents, np.ones(len(tokens), np.float32), np.zeros(len(tokens), np.uint32))


@pytest.mark.parametrize("how,message", [("root_parent", "parents\\[0\\] must be -1"),
                                         ("forward_parent", "0 <= parents\\[i\\] < i"),
                                         ("vocab", "outside the vocabulary"), ("negative_token", "outside the vocab"),
                                         ("root", "expected the last committed token"), ("misaligned", "aligned")])
def test_invalid_trees_are_refused_naming_the_drafter(tiny_models, how, message):
    fast = draftless.accelerate(tiny_models("gpt2"), drafter=BrokenDrafter(how), adaptive=False, calibrate=False)
    with pytest.raises(ValueError, match=f"drafter 'broken' returned an invalid tree: .*{message}"):
        fast.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)


def test_bad_inputs_are_refused_clearly(tiny_models):
    fast = draftless.accelerate(tiny_models("llama"), drafter="ngram")
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = 48 is outside the model's vocabulary \[0, 48\)"):
        fast.generate(torch.tensor([[1, VOCAB, 2]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="outside"):
        fast.generate(torch.tensor([[1, -3]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="2-D"):
        fast.generate(torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 1, 2), max_new_tokens=2)
    with pytest.raises(ValueError, match="row 1 is not left padding"):
        fast.generate(torch.tensor([[1, 2], [3, 4]]), attention_mask=torch.tensor([[1, 1], [1, 0]]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fast.generate(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[2, 1]]))
    with pytest.raises(TypeError, match="neither GenerationConfig fields"):
        fast.generate(torch.tensor([[1, 2]]), max_new_tokens=2, pixel_values=torch.zeros(1))


def test_generation_config_precedence_and_return_dict(tiny_models):
    """kwargs > passed config > model.generation_config > defaults; return_dict gives transformers' own output."""
    from transformers import GenerationConfig
    from transformers.generation import GenerateDecoderOnlyOutput

    model = tiny_models("gemma3")
    ids = torch.tensor([prompt_for(11, length=16)])
    fast = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE)
    config = GenerationConfig(max_new_tokens=9, repetition_penalty=1.5, do_sample=False, pad_token_id=0)
    for kw in (dict(generation_config=config), dict(generation_config=config, repetition_penalty=1.1)):
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        assert torch.equal(fast.generate(ids, **kw).sequences, want)
    kw = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True, output_logits=True,
              no_repeat_ngram_size=2, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    for got in (fast.generate(ids, **kw), model.generate(ids, custom_generate=draftless.custom_generate,
                                                         drafter="ngram", **kw)):
        assert isinstance(got, GenerateDecoderOnlyOutput) and torch.equal(got.sequences, want.sequences)
        assert got.sequences.device == model.device
        for mine, theirs in zip(got.scores + got.logits, want.scores + want.logits, strict=True):
            assert torch.allclose(mine, theirs, atol=1e-4)
    assert fast.last_stats.new_tokens == 5


def test_max_time_and_custom_generate_streamer(tiny_models):
    model = tiny_models("llama")
    ids = torch.tensor([prompt_for(5)])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, max_time=0.0)
    fast = draftless.accelerate(model, drafter="ngram")
    assert want.shape[1] == ids.shape[1] + 1  # max_time=0 stops after the first token
    assert torch.equal(fast.generate(ids, max_new_tokens=10, max_time=0.0).sequences, want)
    streamer = RecordingStreamer()
    seen = streamer.seen
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         custom_generate=draftless.custom_generate, drafter="ngram", draftless_streamer=streamer)
    assert seen[0] == ids[0].tolist() and seen[-1] == "end"
    assert sum(seen[1:-1], []) == out[0, ids.shape[1]:].tolist()


def char_tokenizer():
    """A real ``PreTrainedTokenizerFast`` of VOCAB one-character tokens (a-z, then A-V); stop strings need one."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    chars = [chr(ord("a") + i) for i in range(26)] + [chr(ord("A") + i) for i in range(VOCAB - 26)]
    tok = Tokenizer(WordLevel({c: i for i, c in enumerate(chars)}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_stop_strings_cut_where_model_generate_cuts(tiny_models):
    tokenizer = char_tokenizer()
    for arch in ("llama", "gemma3"):
        model = tiny_models(arch)
        ids = torch.tensor([prompt_for(zlib.crc32(arch.encode()) % 100)])
        plain = reference(model, ids)[0, ids.shape[1]:].tolist()
        stop = tokenizer.convert_ids_to_tokens(plain[7]) + tokenizer.convert_ids_to_tokens(plain[8])
        kw = dict(stop_strings=[stop, "@@"], tokenizer=tokenizer)
        want = reference(model, ids, **kw)
        assert want.shape[1] <= ids.shape[1] + 9
        oracle = OracleDrafter(ids[0].tolist() + plain, VOCAB, seed=3)
        fast = draftless.accelerate(model, drafter=oracle, cost_curve=FLAT_CURVE)
        assert torch.equal(fast.generate(ids, max_new_tokens=MAX_NEW, pad_token_id=0, **kw).sequences, want)


def test_sampling_defaults_resolve_as_in_model_generate(tiny_models):
    """do_sample=True without top_k gets transformers' top-k 50; top_k=0 is off; max_length counts the prompt."""
    from transformers import TopKLogitsWarper

    from draftless.hf.generation import plan_from_arguments

    model = tiny_models("qwen2")
    ids = torch.tensor([prompt_for(9)])

    def top_ks(**kw):
        plan = plan_from_arguments(model, ids, None, None, None, None, None, dict(max_new_tokens=3, **kw))
        return [p.top_k for p in plan.processors if isinstance(p, TopKLogitsWarper)]

    assert top_ks(do_sample=True) == [50] and top_ks(do_sample=True, top_k=0) == []
    assert top_ks(do_sample=True, top_k=7) == [7] and top_ks() == []
    fast = draftless.accelerate(model, drafter="ngram")
    out = fast.generate(ids, do_sample=True, top_k=0, max_new_tokens=3, generator=torch.Generator().manual_seed(0))
    assert len(out.new_tokens) == 3
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_length=ids.shape[1] + 7, pad_token_id=0)
    assert torch.equal(fast.generate(ids, max_length=ids.shape[1] + 7).sequences, want)
