"""Tiny seeded models of four architectures, built in-process from configs (no downloads): what the test suite
(``tests/conftest.py`` serves them as fixtures) and the device check (``scripts/gpu_check.py``) run on."""
from __future__ import annotations

import torch

VOCAB = 48


def make_tiny_model(arch: str, attn: str = "sdpa", vocab: int = VOCAB, seed: int = 0):
    """A small random causal LM of the given architecture, in fp32, eval mode.

    Weights are drawn wider than the usual init so logits are well separated: greedy argmaxes then do not hinge on
    rounding differences between batched and sequential forwards. Gemma 3 gets a sliding window of 6 so the
    window is exercised by short prompts.
    """
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, attn_implementation=attn, initializer_range=0.3)
    if arch == "llama":
        config = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=512, **common)
        model = tf.LlamaForCausalLM(config)
    elif arch == "qwen2":
        config = tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=512, **common)
        model = tf.Qwen2ForCausalLM(config)
    elif arch == "gemma3":
        config = tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                                     num_key_value_heads=2, head_dim=16, max_position_embeddings=512, sliding_window=6,
                                     layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                  "sliding_attention"], **common)
        config.initializer_range = 0.1  # wider makes tied-embedding Gemma repeat its input token forever
        model = tf.Gemma3ForCausalLM(config)
    elif arch == "gpt2":
        config = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=0, eos_token_id=None,
                               **common)
        model = tf.GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model.eval()


ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]
