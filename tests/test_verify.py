"""Tree verification: masks and positions against sequential per-path forwards; cache compaction against a fresh
forward of the accepted sequence. Run on every tiny architecture and both mask-honouring attention kernels."""
import numpy as np
import pytest
import torch
from conftest import ARCHS, VOCAB, make_tiny_model

from draftless.engine.generator import verify_tree
from draftless.engine.prefill import prefill, prefill_bounds
from draftless.engine.tree import DraftTree
from draftless.hf.attention import UnsupportedModel, inspect_model, tree_attention_mask, window_start
from draftless.hf.compat import cache_keyword
from draftless.hf.kv_cache import keep_prefix_and, new_cache, windowed_layers, windowed_views

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


def test_sliding_mask_leaves_out_only_columns_blocked_for_every_node():
    layout = inspect_model(make_tiny_model("gemma3"))
    assert layout.sliding_layers == (0, 1, 3)  # the tiny Gemma 3's layer_types
    assert window_start(layout, 3) == 0 and window_start(layout, 10) == 5 and window_start(layout, 10, 2) == 7
    tree = random_tree(np.random.default_rng(3), 1)
    whole = tree_attention_mask(layout, tree.ancestor_mask(), tree.depths, 10, torch.float32, torch.device("cpu"))
    start = window_start(layout, 10)
    cut = tree_attention_mask(layout, tree.ancestor_mask(), tree.depths, 10, torch.float32, torch.device("cpu"),
                              sliding_from=start)
    assert torch.equal(cut["full_attention"], whole["full_attention"])
    assert torch.equal(cut["sliding_attention"], whole["sliding_attention"][..., start:])
    assert (whole["sliding_attention"][..., :start] < 0).all()  # what is left out, no node could see
    with pytest.raises(ValueError, match="would leave out keys"):
        tree_attention_mask(layout, tree.ancestor_mask(), tree.depths, 10, torch.float32, torch.device("cpu"),
                            sliding_from=start + 1)
    no_window = inspect_model(make_tiny_model("llama"))
    assert no_window.sliding_layers == () and window_start(no_window, 100) == 0
    with pytest.raises(ValueError, match="would leave out keys"):
        tree_attention_mask(no_window, tree.ancestor_mask(), tree.depths, 10, torch.float32, torch.device("cpu"),
                            sliding_from=1)


def test_windowed_views_hand_attention_the_tail_and_store_everything():
    model = make_tiny_model("gemma3")
    cache = new_cache()
    with torch.no_grad():
        model(input_ids=torch.arange(12)[None], **{cache_keyword(model): cache}, use_cache=True)
    layers = windowed_layers(cache, (0, 3))
    assert layers is not None and windowed_layers(cache, (0, 99)) is None and windowed_layers(cache, ()) is None
    stored = layers[0].keys.clone()
    new_k, new_v = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16)
    with windowed_views(layers, 5):
        keys, values = layers[0].update(new_k, new_v)
    assert keys.shape[-2] == 12 + 3 - 5 and torch.equal(keys[..., :7, :], stored[..., 5:, :])
    assert torch.equal(keys[..., 7:, :], new_k) and torch.equal(values[..., 7:, :], new_v)
    assert layers[0].view_start == 0 and layers[0].keys.shape[-2] == 15  # the cache keeps every entry
    keys, _ = layers[1].update(new_k, new_v)  # outside the scope: every entry again
    assert keys.shape[-2] == 15


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_windowed_pass_equals_the_pass_over_every_cached_position(attn):
    """A prefix three windows long: the sliding layers attend over the window only, the logits are those of the
    pass over the whole cache (to float rounding), and the cache holds the same entries afterwards."""
    model = make_tiny_model("gemma3", attn)
    layout = inspect_model(model)
    rng = np.random.default_rng(5)
    prefix = rng.integers(0, VOCAB, 19).tolist()
    tree = random_tree(rng, int(rng.integers(0, VOCAB)), n_paths=5)
    results = []
    for windowed in (True, False):
        cache = new_cache()
        with torch.no_grad():
            model(input_ids=torch.tensor([prefix]), **{cache_keyword(model): cache}, use_cache=True)
            assert windowed_layers(cache, layout.sliding_layers) is not None and window_start(layout, 19) == 14
            logits, _ = verify_tree(model, layout, cache, tree, len(prefix), False, torch.float32,
                                    torch.device("cpu"), windowed=windowed)
        results.append((logits, cache))
    (cut, cut_cache), (whole, whole_cache) = results
    torch.testing.assert_close(cut, whole, atol=2e-5, rtol=1e-5)
    assert torch.equal(cut.argmax(-1), whole.argmax(-1))
    for a, b in zip(cut_cache.layers, whole_cache.layers):
        assert a.view_start == 0 and a.keys.shape == b.keys.shape
        torch.testing.assert_close(a.keys, b.keys, atol=2e-5, rtol=1e-5)
    with torch.no_grad():  # and against plain forwards of each node's sequence
        for node in range(len(tree)):
            seq = prefix + [int(tree.tokens[i]) for i in tree.path_to(node)]
            torch.testing.assert_close(cut[node], model(input_ids=torch.tensor([seq])).logits[0, -1],
                                       atol=2e-4, rtol=1e-4)


def test_long_prompts_on_sliding_models_prefill_in_windowed_chunks():
    """The chunked prefill (each chunk's sliding layers given only their window) leaves the cache a one-pass
    prefill leaves, to float rounding, and a pass after it predicts what a plain forward of the sequence does."""
    model = make_tiny_model("gemma3")
    layout = inspect_model(model)
    assert prefill_bounds(layout, 59, chunk=4) == [12, 24, 36, 48, 59]  # chunks of two windows (6) at least
    assert prefill_bounds(layout, 24, chunk=4) == [24]  # not more than two chunks long: one pass
    assert prefill_bounds(inspect_model(make_tiny_model("llama")), 59, chunk=4) == [59]  # no window: one pass
    assert prefill_bounds(None, 59, chunk=4) == [59]
    prompt = np.random.default_rng(7).integers(0, VOCAB, 60).astype(np.int64)
    caches = []
    with torch.no_grad():
        for lay in (layout, None):
            cache = new_cache()
            prefill(model, prompt, cache, torch.device("cpu"), lay, chunk=4)
            caches.append(cache)
        for a, b in zip(*(c.layers for c in caches)):
            assert a.keys.shape[-2] == 59 and a.view_start == 0
            torch.testing.assert_close(a.keys, b.keys, atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(a.values, b.values, atol=2e-5, rtol=1e-5)
        tree = random_tree(np.random.default_rng(8), int(prompt[-1]))
        logits, _ = verify_tree(model, layout, caches[0], tree, 59, False, torch.float32, torch.device("cpu"))
        for node in range(len(tree)):
            seq = prompt[:-1].tolist() + [int(tree.tokens[i]) for i in tree.path_to(node)]
            torch.testing.assert_close(logits[node], model(input_ids=torch.tensor([seq])).logits[0, -1],
                                       atol=2e-4, rtol=1e-4)


def test_stateful_models_are_refused():
    import transformers as tf

    # the reason (a state that cannot be rolled back), whichever way the installed transformers reports such
    # layers: the private _is_stateful flag (<= 5.24) or layer_types "linear_attention" (5.25)
    mamba = tf.MambaForCausalLM(tf.MambaConfig(vocab_size=32, hidden_size=16, state_size=4, num_hidden_layers=1))
    with pytest.raises(UnsupportedModel, match="recurrent state that cannot be rolled back"):
        inspect_model(mamba)


def test_hybrid_linear_attention_models_are_refused_for_their_recurrent_layers():
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=2)
    model = tf.LlamaForCausalLM(config)
    model.config.layer_types = ["full_attention", "linear_attention"]  # as a hybrid model's config reports it
    with pytest.raises(UnsupportedModel, match="recurrent state that cannot be rolled back"):
        inspect_model(model)


# ---------------------------------------------------------------------------- nothing a pass does leaks to threads
@pytest.mark.parametrize("path", ["torch", "skinny", "packed"])
def test_a_pass_changes_nothing_another_thread_sees(path):
    """While a tree pass runs on a fast path in one thread (hooks attached, router active), plain forwards of the same
    model in another thread give exactly the logits they give alone, and the config is never switched."""
    import threading

    from draftless.fastpath import VerificationPaths
    from draftless.hf.compat import attn_implementation

    model = make_tiny_model("llama", "sdpa")
    paths = VerificationPaths(model)
    rng = np.random.default_rng(3)
    plain_ids = torch.from_numpy(rng.integers(0, VOCAB, (1, 9)))
    with torch.no_grad():
        alone = model(input_ids=plain_ids).logits
    tree = random_tree(rng, int(rng.integers(0, VOCAB)), n_paths=5)
    seen, stop = [], threading.Event()

    def plain_forwards():
        with torch.no_grad():
            while not stop.is_set():
                seen.append((attn_implementation(model), model(input_ids=plain_ids).logits))

    other = threading.Thread(target=plain_forwards)
    with torch.no_grad(), paths.attached():
        other.start()
        try:
            for _ in range(30):
                with paths.context(path):
                    logits, _ = tree_forward(model, [1, 2, 3], tree)
        finally:
            stop.set()
            other.join()
    assert seen
    for impl, out in seen:
        assert impl == "sdpa"
        torch.testing.assert_close(out, alone, atol=0, rtol=0)
    with torch.no_grad():
        for node in range(len(tree)):
            seq = [1, 2, 3] + [int(tree.tokens[i]) for i in tree.path_to(node)]
            ref = model(input_ids=torch.tensor([seq])).logits[0, -1]
            torch.testing.assert_close(logits[node], ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_grouped_query_sdpa_changes_no_bit(arch, monkeypatch):
    """The grouped-query SDPA the command line turns on (``hf.compat.GROUPED_QUERY_SDPA_ENV``) gives tree logits
    equal bit for bit to the per-head copies transformers makes otherwise (the tiny models have 4 query heads on
    2 key/value heads); a negative control shows the variable reaches transformers."""
    from draftless.hf.compat import GROUPED_QUERY_SDPA_ENV

    model = make_tiny_model(arch, "sdpa")
    rng = np.random.default_rng(5)
    prefix = rng.integers(0, VOCAB, 7).tolist()
    tree = random_tree(rng, int(rng.integers(0, VOCAB)), n_paths=5)
    monkeypatch.setenv(GROUPED_QUERY_SDPA_ENV, "0")
    copied, _ = tree_forward(model, prefix, tree)
    monkeypatch.setenv(GROUPED_QUERY_SDPA_ENV, "1")
    grouped, _ = tree_forward(model, prefix, tree)
    assert torch.equal(grouped, copied)
    calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(kw.get("enable_gqa", False)) or real_sdpa(*a, **kw))
    tree_forward(model, prefix, tree)
    assert calls and all(calls)
