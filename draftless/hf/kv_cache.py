"""Every contact with transformers' KV-cache internals lives here, so an upstream API change touches one file.

The engine uses a plain ``DynamicCache()`` (built without the model config): every layer, sliding-window layers
included, then keeps all positions, so one set of positions can be compacted uniformly across layers and a sliding
window is enforced by the attention mask instead of by cache eviction. The extra memory is what a full-attention
layer of the same size would use.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    """An empty cache whose layers all keep every position (see module docstring)."""
    return DynamicCache()


def keep_prefix_and(cache: DynamicCache, prefix_len: int, kept: torch.Tensor) -> None:
    """Compact every layer in place to ``[0, prefix_len) ∪ (prefix_len + kept)``.

    ``kept``: int64[k] sorted offsets (into the block appended after ``prefix_len``) of the entries to keep, e.g.
    the accepted tree nodes. Only the kept entries move; the tail is dropped by slicing, which is a view (the next
    ``update`` concatenates into fresh storage anyway).
    """
    k = int(kept.numel())
    contiguous = k == 0 or int(kept[-1]) == k - 1  # kept == [0, 1, ..., k-1]: nothing has to move
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
            continue
        if not contiguous:
            src = prefix_len + kept
            layer.keys[..., prefix_len:prefix_len + k, :] = layer.keys.index_select(-2, src)
            layer.values[..., prefix_len:prefix_len + k, :] = layer.values.index_select(-2, src)
        layer.keys = layer.keys[..., : prefix_len + k, :]
        layer.values = layer.values[..., : prefix_len + k, :]

