"""Concurrency and refusals a server meets: threads calling ``model.generate(custom_generate=...)`` on one model at
once, a plain ``model.generate`` in another thread during draftless passes, sibling engines, ALiBi architectures,
``inputs_embeds`` and prompts past the position limit."""
import threading
import warnings

import numpy as np
import pytest
import torch
from conftest import VOCAB, run_threads
from test_greedy import FLAT_CURVE, reference

import draftless
from draftless.hf.generation import UnsupportedGenerationOption

SPEC = "ngram+sam+recycle"


def _prompt(seed: int, length: int = 16) -> list[int]:
    rng = np.random.default_rng(seed)
    base = rng.integers(1, VOCAB, 5).tolist()
    return (base * 4)[:length - 3] + rng.integers(1, VOCAB, 3).tolist()  # repeats, so drafts get accepted


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_concurrent_custom_generate_calls_each_return_model_generate_output(tiny_models, arch):
    model = tiny_models(arch)
    pool = draftless.CustomGenerate(max_concurrent=4)
    prompts = [_prompt(seed) for seed in range(8)]
    expected = [reference(model, p, 20) for p in prompts]

    def work(i):
        outs = []
        for round_ in range(2):
            k = (i + 4 * round_) % len(prompts)
            ids = torch.tensor([prompts[k]])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                                 custom_generate=pool, drafter=SPEC, drafter_options={"cost_curve": FLAT_CURVE})
            outs.append((k, out))
        return outs

    for _ in range(2):  # repeatedly: the second round reuses the pool's engines
        for outs in run_threads(4, work):
            for k, out in outs:
                assert torch.equal(out, expected[k])
    (the_pool,) = pool.engines.values()
    assert 1 <= len(the_pool.engines) <= 4
    first = the_pool.engines[0]
    assert all(e.shared is first.shared for e in the_pool.engines)  # one cost curve, one calibrator


def test_plain_generate_in_another_thread_is_untouched(tiny_models):
    model = tiny_models("llama")
    prompt = _prompt(11)
    plain_expected = reference(model, _prompt(12), 24)
    fast = draftless.accelerate(model, drafter=SPEC, cost_curve=draftless.engine.cost_curve.CostCurve(
        (1, 8, 64), (1.0, 1.1, 1.5), ("skinny",) * 3))  # a fast path on: routing hooks attached to the model
    stop, plain_outputs = threading.Event(), []

    def plain_calls():
        ids = torch.tensor([_prompt(12)])
        while not stop.is_set():
            with torch.no_grad():
                plain_outputs.append(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                                    do_sample=False))

    other = threading.Thread(target=plain_calls)
    other.start()
    try:
        for _ in range(4):
            out = fast.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
            assert torch.equal(out.sequences, reference(model, prompt, 24))
    finally:
        stop.set()
        other.join()
    assert plain_outputs and all(torch.equal(o, plain_expected) for o in plain_outputs)


def test_siblings_share_what_they_learn_and_one_engine_serves_one_request(tiny_models):
    model = tiny_models("llama")
    fast = draftless.accelerate(model, drafter=SPEC, cost_curve=FLAT_CURVE)
    twin = fast.sibling()
    assert twin.shared is fast.shared and twin.drafter is not fast.drafter
    assert twin.calibrator is fast.calibrator and twin.cost_curve is fast.cost_curve
    prompt = _prompt(3)
    results = run_threads(2, lambda i: (fast, twin)[i].generate(torch.tensor([prompt]), max_new_tokens=16))
    for r in results:
        assert torch.equal(r.sequences, reference(model, prompt, 16))
    with fast._one_request():
        with pytest.raises(RuntimeError, match="sibling"):
            fast.generate(torch.tensor([prompt]), max_new_tokens=4)
    alone = draftless.accelerate(model, drafter=draftless.NullDrafter())
    with pytest.raises(RuntimeError, match="drafter_factory"):
        alone.sibling()


def test_a_drafter_object_without_factory_takes_turns_in_the_pool(tiny_models):
    model = tiny_models("qwen2")
    pool = draftless.CustomGenerate()
    drafter = draftless.NullDrafter()
    prompt = _prompt(5)
    expected = reference(model, prompt, 12)

    def work(i):
        ids = torch.tensor([prompt])
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              custom_generate=pool, drafter=drafter, drafter_options={"cost_curve": FLAT_CURVE})

    assert all(torch.equal(o, expected) for o in run_threads(3, work))
    (the_pool,) = pool.engines.values()
    assert len(the_pool.engines) == 1


def test_inputs_embeds_is_refused_naming_input_ids(tiny_models):
    model = tiny_models("llama")
    embeds = model.get_input_embeddings()(torch.tensor([_prompt(2)]))
    with pytest.raises(UnsupportedGenerationOption, match="input_ids"):
        model.generate(inputs_embeds=embeds, max_new_tokens=4, custom_generate=draftless.CustomGenerate(),
                       drafter="ngram", drafter_options={"cost_curve": FLAT_CURVE})
    fast = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE)
    with pytest.raises(UnsupportedGenerationOption, match="input_ids"):
        fast.generate(torch.tensor([_prompt(2)]), inputs_embeds=embeds, max_new_tokens=4)


def test_prompt_past_the_position_limit(tiny_models):
    gpt2 = tiny_models("gpt2")  # learned positions: 512
    fast = draftless.accelerate(gpt2, drafter="ngram", cost_curve=FLAT_CURVE)
    with pytest.raises(ValueError, match="learned positions"):
        fast.generate(torch.ones(1, 520, dtype=torch.long), max_new_tokens=2)
    llama = tiny_models("llama")  # rotary, max_position_embeddings 512: runs, with transformers' kind of warning
    fast = draftless.accelerate(llama, drafter="ngram", cost_curve=FLAT_CURVE)
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        fast.generate(torch.tensor([_prompt(4)] * 1)[:, :8].repeat(1, 64), max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast.generate(torch.tensor([_prompt(4)]), max_new_tokens=2)
