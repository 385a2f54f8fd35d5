"""Every contact with transformers' KV-cache internals lives here, so an upstream API change touches one file.

The engine's cache is a ``DynamicCache`` built without the model config: every layer, sliding-window layers
included, keeps all positions, so one set of positions can be compacted uniformly across layers and a sliding
window is enforced by the attention mask instead of by cache eviction (the extra memory is what a full-attention
layer of the same size would use).

Its layers are ``PreallocatedLayer``s: keys and values live in buffers with spare room and ``update`` writes new
entries in place, where transformers' ``DynamicLayer`` concatenates the whole cache into fresh storage on every
forward (measured: about 4 ms a step for SmolLM2-135M at a 512-token cache on a 2-core CPU, 6% of a pass).
Compaction after a step moves only the accepted entries and shortens the views.

A sliding-window layer still keeps every position, but a tree pass need not attend over all of them: every key more
than a window behind the pass's first node is blocked for all its nodes. ``windowed_views`` has such layers hand
attention the keys from the first visible one on (a view, nothing copied), with the pass's mask cut to match
(``attention.tree_attention_mask(sliding_from=)``). Measured on Gemma 3 270M (15 of its 18 layers slide over 512
positions), 2 threads: at a 2,048-token context SDPA over the whole cache cost about 0.6 ms a layer, memory-bound,
against 0.04 ms over 256 positions.
"""
from __future__ import annotations

import contextlib

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views ``[B, H, length, D]`` into larger buffers.

    Capacity grows by doubling (at least ``MIN_SPARE`` positions beyond what is needed), so appends are amortised
    O(new entries) and the views stay valid until the next growth.
    """

    MIN_SPARE = 256
    view_start = 0  # ``update`` returns the entries from this slot on (``windowed_views``); 0: all of them

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0
        self.view_start = 0  # an instance attribute from the start: a compiled forward's guards see one layout

    def _reserve(self, like_keys: torch.Tensor, like_values: torch.Tensor, needed: int) -> None:
        capacity = 0 if self._key_buffer is None else self._key_buffer.shape[-2]
        if needed <= capacity:
            return
        capacity = max(needed + self.MIN_SPARE, 2 * capacity)

        def grown(old: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
            shape = list(like.shape)
            shape[-2] = capacity
            new = torch.empty(shape, dtype=like.dtype, device=like.device)
            if old is not None and self._length:
                new[..., : self._length, :] = old[..., : self._length, :]
            return new

        self._key_buffer = grown(self._key_buffer, like_keys)
        self._value_buffer = grown(self._value_buffer, like_values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append ``key_states``/``value_states`` ``[B, H, n, D]`` in place; returns the views of all entries."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        self._reserve(key_states, value_states, end)
        self._key_buffer[..., self._length:end, :] = key_states
        self._value_buffer[..., self._length:end, :] = value_states
        self.truncate(end)
        if self.view_start:
            return self.keys[..., self.view_start:, :], self.values[..., self.view_start:, :]
        return self.keys, self.values

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` entries (the buffers keep their storage)."""
        self._length = int(length)
        self.keys = self._key_buffer[..., : self._length, :]
        self.values = self._value_buffer[..., : self._length, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self.truncate(max(0, self._length + tokens_to_remove))
        else:
            super().crop(tokens_to_remove)

    def move_entries(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Per row b, copy the entries at slots ``src[b]`` to slots ``dst[b]`` (int64 [B, k] each, the ``dst``
        slots of a row distinct). Every source is read before any destination is written, so they may overlap."""
        rows = torch.arange(src.shape[0], device=src.device)[:, None]
        for buffer in (self._key_buffer, self._value_buffer):
            moved = buffer[rows, :, src]  # [B, k, H, D]: advanced indices around a slice come first
            buffer[rows, :, dst] = moved

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (int64 [b], in that order); copies the buffers."""
        self._key_buffer = self._key_buffer.index_select(0, rows)
        self._value_buffer = self._value_buffer.index_select(0, rows)
        self.truncate(self._length)

    def reset(self) -> None:
        super().reset()
        self._key_buffer = self._value_buffer = None
        self._length = 0


class PreallocatedCache(DynamicCache):
    """A ``DynamicCache`` whose layers are ``PreallocatedLayer``s (created on first use, one per model layer)."""

    def __init__(self):
        super().__init__()
        self.layer_class_to_replicate = PreallocatedLayer


def new_cache() -> DynamicCache:
    """An empty cache whose layers all keep every position, written in place (see module docstring)."""
    return PreallocatedCache()


def windowed_layers(cache: DynamicCache, layer_indices) -> list[PreallocatedLayer] | None:
    """The layers ``layer_indices`` of ``cache`` when all of them can hand out windowed views (filled
    ``PreallocatedLayer``s), else None (a cache of another kind: its passes attend over every position)."""
    layers = getattr(cache, "layers", None)
    if not layer_indices or layers is None or max(layer_indices) >= len(layers):
        return None
    chosen = [layers[i] for i in layer_indices]
    if not all(isinstance(layer, PreallocatedLayer) and layer.is_initialized for layer in chosen):
        return None
    return chosen


@contextlib.contextmanager
def windowed_views(layers: list[PreallocatedLayer], start: int):
    """For the duration, ``layers`` hand attention their entries from slot ``start`` on (see the module
    docstring); what they store is unchanged. The caller's mask for those layers must leave out the same first
    ``start`` key columns."""
    for layer in layers:
        layer.view_start = int(start)
    try:
        yield
    finally:
        for layer in layers:
            layer.view_start = 0


def keep_prefix_and(cache: DynamicCache, prefix_len: int, kept: torch.Tensor) -> None:
    """Compact every layer in place to ``[0, prefix_len) ∪ (prefix_len + kept)``.

    ``kept``: int64[k] sorted offsets (into the block appended after ``prefix_len``) of the entries to keep, e.g.
    the accepted tree nodes. Only the kept entries move; the tail is dropped by shortening the views.
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
        if isinstance(layer, PreallocatedLayer):
            layer.truncate(prefix_len + k)
        else:
            layer.keys = layer.keys[..., : prefix_len + k, :]
            layer.values = layer.values[..., : prefix_len + k, :]


# ---------------------------------------------------------------------------- a batch of ragged rows
# One cache holds a whole batch: every pass appends its [B, n] new entries at the common write pointer (the
# layers' length), so after acceptance each row moves its own accepted entries down to just after its committed
# ones (``move_row_entries``); what lies between a row's end and the write pointer is masked out by the attention
# mask (``hf/attention.py``, ``batch_tree_mask``), never read.


def _filled_layers(cache: DynamicCache) -> list[PreallocatedLayer]:
    layers = [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]
    for layer in layers:
        if not isinstance(layer, PreallocatedLayer):
            raise TypeError(f"a batch cache needs PreallocatedLayer layers (new_cache()), got {type(layer).__name__}")
    return layers


def move_row_entries(cache: DynamicCache, src: torch.Tensor, dst: torch.Tensor, length: int) -> None:
    """In every layer, per row b, copy slots ``src[b]`` to slots ``dst[b]`` (int64 [B, k]), then cut every row to
    ``length`` slots (the new write pointer)."""
    for layer in _filled_layers(cache):
        if src.shape[1]:
            layer.move_entries(src, dst)
        layer.truncate(length)


def select_batch_rows(cache: DynamicCache, rows: torch.Tensor, length: int) -> None:
    """Keep the batch rows ``rows`` (int64 [b]) of every layer and cut them to ``length`` slots: finished rows
    leave the batch, so later passes stop computing them."""
    for layer in _filled_layers(cache):
        layer.select_rows(rows)
        layer.truncate(length)
