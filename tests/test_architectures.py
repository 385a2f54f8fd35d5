"""Beyond the four architectures of the main suite: greedy output identical to ``model.generate`` on tiny random
models of every other decoder family draftless claims to verify (docs/threads.md lists them), with a context drafter
(``ngram``) and a mix that drafts wide trees (``lookahead:2+sam+recycle``). A family whose forward reads positions
or masks its own way (sliding windows, soft-capping, multi-query attention, partial rotary, MoE routing) shows up
here as a wrong token, not as a crash."""
import pytest
import torch
from test_greedy import FLAT_CURVE

import draftless

VOCAB = 48
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256, initializer_range=0.3, bos_token_id=None, eos_token_id=None,
              pad_token_id=0)
# per family: what its config needs beyond COMMON (grouped KV heads where it has them, a short sliding window so
# short prompts cross it, rotary on part of the head), and the attention implementation it offers
FAMILIES = {
    "mistral": dict(num_key_value_heads=2, sliding_window=6),
    "qwen3": dict(num_key_value_heads=2, head_dim=16),
    "phi3": dict(num_key_value_heads=2),
    "phi": dict(),
    "gpt_neox": dict(),
    "gptj": dict(n_positions=256, rotary_dim=8),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=64),
    "falcon": dict(new_decoder_architecture=True, num_kv_heads=2),
    "stablelm": dict(num_key_value_heads=2),
    "starcoder2": dict(num_key_value_heads=2),
    "gemma2": dict(num_key_value_heads=2, head_dim=16, sliding_window=6, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0, attn_implementation="eager"),
    "cohere": dict(num_key_value_heads=2),
    "olmo2": dict(num_key_value_heads=2),
    "granite": dict(num_key_value_heads=2),
    "mixtral": dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "gpt_bigcode": dict(n_positions=256, multi_query=True),
    "codegen": dict(n_positions=256, n_ctx=256, rotary_dim=8),
}
# a prompt that repeats itself (so drafts get accepted and trees go deep), then leaves its pattern
PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 9, 10, 11], [3], [20, 21, 20, 21, 20, 21, 20]]


def tiny_family_model(family: str):
    return _tiny_model(family, {**COMMON, "attn_implementation": "sdpa", **FAMILIES[family]})


def _tiny_model(family: str, options: dict):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.AutoConfig.for_model(family, **options)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_identical_on_every_claimed_family(family):
    model = tiny_family_model(family)
    engines = {spec: draftless.accelerate(model, drafter=spec, cost_curve=FLAT_CURVE)
               for spec in ("ngram", "lookahead:2+sam+recycle")}
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        for spec, fast in engines.items():
            got = fast.generate(ids, max_new_tokens=24)
            assert torch.equal(got.sequences, want), (family, spec, prompt)


# ---------------------------------------------------------------------------- ALiBi: one draft chain per pass
# ALiBi models build their position biases from the keys' order and a 2-D padding mask, so the engine verifies the
# best path of each drafted tree with a plain 2-D mask (``AttentionLayout.chain_only``); a chain's positions are
# its order, so the output stays exact.
ALIBI_FAMILIES = {
    "bloom": dict(hidden_size=64, n_layer=2, n_head=4),
    "mpt": dict(d_model=64, n_layers=2, n_heads=4, max_seq_len=256),
    "falcon": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True,
                   new_decoder_architecture=False, multi_query=True),
}


def tiny_alibi_model(family: str):
    return _tiny_model(family, dict(vocab_size=VOCAB, initializer_range=0.3, bos_token_id=None, eos_token_id=None,
                                    pad_token_id=0, **ALIBI_FAMILIES[family]))


@pytest.mark.parametrize("family", sorted(ALIBI_FAMILIES))
def test_alibi_models_identical_with_every_drafter(family):
    from test_greedy import DRAFTER_SPECS, drafter_from_spec

    model = tiny_alibi_model(family)
    engine = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE)
    assert engine.layout.chain_only is not None and family in engine.layout.chain_only
    for spec in DRAFTER_SPECS:
        fast = draftless.accelerate(model, drafter=drafter_from_spec(spec, model), cost_curve=FLAT_CURVE)
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            with torch.no_grad():
                want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
            got = fast.generate(ids, max_new_tokens=24)
            assert torch.equal(got.sequences, want), (family, spec, prompt)


def test_alibi_drafts_are_verified_as_chains_and_accepted():
    model = tiny_alibi_model("bloom")
    fast = draftless.accelerate(model, drafter="ngram+sam+recycle", cost_curve=FLAT_CURVE)
    # a prompt the model continues by copying: drafts get accepted, several tokens a pass
    ids = torch.tensor([PROMPTS[0] * 3])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
    got = fast.generate(ids, max_new_tokens=40)
    assert torch.equal(got.sequences, want)
    assert got.stats.new_tokens / got.stats.steps > 1.0


@pytest.mark.parametrize("family", sorted(ALIBI_FAMILIES))
def test_alibi_batches_and_custom_generate_are_exact(family):
    model = tiny_alibi_model(family)
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 5, 6, 7], [9, 10, 11, 9, 10, 11, 9, 10, 11]])
    mask = (torch.arange(ids.shape[1])[None] >= torch.tensor([[2], [0]])).long()
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
        got = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                             custom_generate=draftless.custom_generate, drafter="ngram+recycle")
    assert torch.equal(got, want)


@pytest.mark.parametrize("spec", ["self:1", "model"])
def test_alibi_drafting_on_the_model_is_refused_naming_the_model(spec):
    from draftless.drafters.model_drafter import ModelDrafter
    from draftless.drafters.spec import DrafterContext, build_drafter
    from draftless.hf.attention import UnsupportedModel

    model = tiny_alibi_model("bloom")
    # a draft model's trees need tree masks (refused naming ALiBi); layer skipping refuses Bloom's shape first
    with pytest.raises(UnsupportedModel, match="(?s)bloom.*ALiBi" if spec == "model" else "Bloom"):
        if spec == "model":
            ModelDrafter(model, target=model)
        else:
            build_drafter(spec, DrafterContext(model=model))


def test_mpt_prompt_past_its_alibi_table_is_refused():
    model = tiny_alibi_model("mpt")  # max_seq_len=256: MPT's ALiBi table ends there
    ids = torch.full((1, 300), 5)
    with pytest.raises(ValueError, match="learned positions for 256"):
        draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE).generate(ids, max_new_tokens=4)


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_sliding_window_families_prefill_and_verify_windowed(family):
    """The other families with sliding windows (Mistral's on every layer, without ``layer_types``; Gemma 2's on
    alternate layers, soft-capped): a prompt prefilled in windowed chunks leaves the cache one pass leaves, and a
    windowed tree pass after it predicts what plain forwards of each node's sequence do."""
    import numpy as np

    from draftless.engine.generator import verify_tree
    from draftless.engine.prefill import prefill, prefill_bounds
    from draftless.engine.tree import DraftTree
    from draftless.hf.attention import inspect_model
    from draftless.hf.kv_cache import new_cache

    model = tiny_family_model(family)
    layout = inspect_model(model)
    assert layout.sliding_window == 6 and layout.sliding_layers
    prompt = np.random.default_rng(3).integers(1, VOCAB, 41).astype(np.int64)
    assert len(prefill_bounds(layout, 40, chunk=4)) == 4
    caches = [new_cache(), new_cache()]
    with torch.no_grad():
        prefill(model, prompt, caches[0], torch.device("cpu"), layout, chunk=4)
        prefill(model, prompt, caches[1], torch.device("cpu"))
        for a, b in zip(caches[0].layers, caches[1].layers):
            torch.testing.assert_close(a.keys, b.keys, atol=2e-5, rtol=1e-5)
        tree = DraftTree.from_paths(int(prompt[-1]), [[1, 2, 3, 4], [1, 5], [6, 7, 8]])
        logits, _ = verify_tree(model, layout, caches[0], tree, 40, False, torch.float32, torch.device("cpu"))
        for node in range(len(tree)):
            seq = prompt[:-1].tolist() + [int(tree.tokens[i]) for i in tree.path_to(node)]
            torch.testing.assert_close(logits[node], model(input_ids=torch.tensor([seq])).logits[0, -1],
                                       atol=2e-4, rtol=1e-4)
