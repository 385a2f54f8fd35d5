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
    import transformers as tf

    options = {**COMMON, "attn_implementation": "sdpa", **FAMILIES[family]}
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
