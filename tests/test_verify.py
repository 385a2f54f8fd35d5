"""Tree verification: masks and positions against sequential per-path forwards; cache compaction against a fresh
forward of the accepted sequence. Run on every tiny architecture and both mask-honouring attention kernels."""
import numpy as np
import pytest
import torch

from draftless.hf.compat import cache_keyword
from draftless.hf.attention import UnsupportedModel, inspect_model, tree_attention_mask
from draftless.hf.kv_cache import keep_prefix_and, new_cache
from draftless.engine.tree import DraftTree

from conftest import ARCHS, VOCAB, make_tiny_model

CASES = [(a, "sdpa") for a in ARCHS] + [("llama", "eager"), ("gemma3", "eager")]


def random_tree(rng, root, n_paths=4, max_depth=9):
    paths = [rng.integers(0, VOCAB, int(rng.integers(1, max_depth + 1))).tolist() for _ in range(n_paths)]
    # share prefixes so the tree branches at several depths
    for i in range(1, len(paths)):
        k = int(rng.integers(0, min(len(paths[i]), len(paths[0])) + 1))
        paths[i][:k] = paths[0][:k]
    return DraftTree.from_paths(root, paths)


def tree_forward(model, prefix, tree):
    layout = inspect_model(model)
    cache = new_cache()
    with torch.no_grad():
        if len(prefix) > 0:
            model(input_ids=torch.tensor([prefix]), **{cache_keyword(model): cache}, use_cache=True)
        mask = tree_attention_mask(layout, tree.ancestor_mask(), tree.depths, len(prefix), torch.float32,
                                   torch.device("cpu"))
        out = model(input_ids=torch.from_numpy(tree.tokens)[None],
                    position_ids=torch.from_numpy(tree.depths.astype(np.int64) + len(prefix))[None],
                    attention_mask=mask, **{cache_keyword(model): cache}, use_cache=True)
    return out.logits[0], cache


@pytest.mark.parametrize("arch,attn", CASES)
@pytest.mark.parametrize("prefix_len", [0, 3, 11])
def test_tree_logits_equal_sequential_path_logits(arch, attn, prefix_len):
    model = make_tiny_model(arch, attn)
    rng = np.random.default_rng(prefix_len)
    prefix = rng.integers(0, VOCAB, prefix_len).tolist()
    tree = random_tree(rng, int(rng.integers(0, VOCAB)))
    logits, _ = tree_forward(model, prefix, tree)
    with torch.no_grad():
        for node in range(len(tree)):
            seq = prefix + [int(tree.tokens[i]) for i in tree.path_to(node)]
            ref = model(input_ids=torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(logits[node], ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch,attn", CASES)
def test_compacted_cache_equals_fresh_forward_of_accepted_sequence(arch, attn):
    model = make_tiny_model(arch, attn)
    rng = np.random.default_rng(1)
    prefix = rng.integers(0, VOCAB, 9).tolist()
    tree = random_tree(rng, int(rng.integers(0, VOCAB)), n_paths=5)
    _, cache = tree_forward(model, prefix, tree)
    leaf = int(np.argmax(tree.depths))
    accepted = torch.tensor(tree.path_to(leaf))
    keep_prefix_and(cache, len(prefix), accepted)
    seq = prefix + [int(tree.tokens[i]) for i in tree.path_to(leaf)]
    fresh = new_cache()
    with torch.no_grad():
        model(input_ids=torch.tensor([seq]), **{cache_keyword(model): fresh}, use_cache=True)
    assert cache.get_seq_length() == len(seq)
    for got, want in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=2e-5, rtol=1e-4)
    # and decoding continues correctly from the compacted cache
    nxt = int(rng.integers(0, VOCAB))
    with torch.no_grad():
        a = model(input_ids=torch.tensor([[nxt]]), position_ids=torch.tensor([[len(seq)]]),
                  **{cache_keyword(model): cache}, use_cache=True).logits[0, -1]
        b = model(input_ids=torch.tensor([seq + [nxt]])).logits[0, -1]
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_unsupported_attention_is_refused_before_work():
    model = make_tiny_model("llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModel, match="attn_implementation='sdpa'"):
        inspect_model(model)


def test_gemma3_sliding_layers_get_their_own_mask():
    layout = inspect_model(make_tiny_model("gemma3"))
    assert layout.sliding_window == 6 and set(layout.layer_types) == {"sliding_attention", "full_attention"}
    tree = DraftTree.from_chain(1, [2, 3])
    masks = tree_attention_mask(layout, tree.ancestor_mask(), tree.depths, 10, torch.float32, torch.device("cpu"))
    full, sliding = masks["full_attention"], masks["sliding_attention"]
    assert full.shape == sliding.shape == (1, 1, 3, 13)
    assert (full[0, 0, 2, :10] == 0).all()
    # node 2 sits at position 12: it may see keys at positions > 6 only
    assert (sliding[0, 0, 2, :7] < 0).all() and (sliding[0, 0, 2, 7:] == 0).all()


def test_stateful_models_are_refused():
    import transformers as tf

    mamba = tf.MambaForCausalLM(tf.MambaConfig(vocab_size=32, hidden_size=16, state_size=4, num_hidden_layers=1))
    with pytest.raises(UnsupportedModel, match="recurrent state"):
        inspect_model(mamba)


# ---------------------------------------------------------------------------- grouped-query attention for tree passes
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("prefix_len", [0, 7])
def test_grouped_attention_tree_logits_equal_sequential_path_logits(arch, prefix_len):
    """A tree pass under the verification context (grouped-query attention on) gives every node the logits of a
    plain sequential forward of its path, and the model is back on sdpa afterwards."""
    from draftless.fastpath import VerificationPaths
    from draftless.hf.attention import GROUPED_SDPA
    from draftless.hf.compat import attn_implementation

    model = make_tiny_model(arch, "sdpa")
    paths = VerificationPaths(model)
    assert paths._attention.applies  # the tiny models have 4 query heads on 2 key/value heads
    rng = np.random.default_rng(prefix_len + 5)
    prefix = rng.integers(0, VOCAB, prefix_len).tolist()
    tree = random_tree(rng, int(rng.integers(0, VOCAB)), n_paths=5)
    seen = []
    with torch.no_grad():
        cache = new_cache()
        if prefix:
            model(input_ids=torch.tensor([prefix]), **{cache_keyword(model): cache}, use_cache=True)
        mask = tree_attention_mask(inspect_model(model), tree.ancestor_mask(), tree.depths, len(prefix),
                                   torch.float32, torch.device("cpu"))
        context = paths.context("torch")
        assert attn_implementation(model) == "sdpa"  # made, not entered: nothing switched yet
        with context:
            seen.append(attn_implementation(model))
            logits = model(input_ids=torch.from_numpy(tree.tokens)[None],
                           position_ids=torch.from_numpy(tree.depths.astype(np.int64) + len(prefix))[None],
                           attention_mask=mask, **{cache_keyword(model): cache}, use_cache=True).logits[0]
        assert seen == [GROUPED_SDPA] and attn_implementation(model) == "sdpa"
        for node in range(len(tree)):
            seq = prefix + [int(tree.tokens[i]) for i in tree.path_to(node)]
            ref = model(input_ids=torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(logits[node], ref, atol=2e-4, rtol=1e-4)


class _Attention(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("mask_kind", ["shared", "per_head", "bool"])
@pytest.mark.parametrize("batch,groups,n", [(1, 3, 5), (2, 2, 4), (1, 4, 1)])
def test_grouped_sdpa_attention_equals_sdpa(mask_kind, batch, groups, n):
    """grouped_sdpa_attention against transformers' own sdpa attention (which copies keys and values per head)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from draftless.hf.attention import grouped_sdpa_attention

    gen = torch.Generator().manual_seed(batch * 100 + groups * 10 + n)
    kv_heads, keys, dim = 2, 13, 8
    heads = kv_heads * groups
    query = torch.randn(batch, heads, n, dim, generator=gen)
    key = torch.randn(batch, kv_heads, keys, dim, generator=gen)
    value = torch.randn(batch, kv_heads, keys, dim, generator=gen)
    allowed = torch.rand(batch, 1 if mask_kind != "per_head" else heads, n, keys, generator=gen) > 0.4
    allowed[..., 0] = True  # every query sees at least one key
    mask = allowed if mask_kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo().min)
    module = _Attention(groups)
    ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    out, _ = grouped_sdpa_attention(module, query, key, value, mask, scaling=0.3)
    assert out.shape == (batch, n, heads, dim)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_grouped_attention_does_not_apply_without_grouped_queries():
    from draftless.fastpath import VerificationPaths
    from draftless.hf.compat import attn_implementation

    model = make_tiny_model("gpt2", "sdpa")  # as many key/value heads as query heads
    paths = VerificationPaths(model)
    assert not paths._attention.applies
    with paths.context("torch"):
        assert attn_implementation(model) == "sdpa"
