"""Prefill: a request's prompt into a fresh KV cache before the first step, for one row (``prefill``) or a
left-padded batch (``prefill_batch``).

A long prompt on a model with sliding-window layers goes in chunks (``prefill_bounds``): each chunk after the first
hands the sliding layers only the keys inside their window (``kv_cache.windowed_views``, with the mask cut to match),
where one pass over the whole prompt has them attend over all of it with a mask (SDPA computes every masked key).
Measured on Gemma 3 270M (window 512, 2 threads): 3,000 tokens 6.0 s against 7.7 s in one pass, 4,500 tokens 9.4 s
against 15.1 s, 2,100 tokens 4.2 against 4.6 s; at 1,100 tokens chunks did not pay (hence
``WINDOWED_PREFILL_MIN_CHUNKS``), and 1,024-token chunks beat 256-512-token ones (2,700 tokens: 5.05 s against
5.2-5.8 s).
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..hf.attention import AttentionLayout, cut_sliding_mask, padded_prefill_mask, tree_attention_mask, window_start
from ..hf.compat import cache_keyword
from ..hf.kv_cache import windowed_layers, windowed_views

WINDOWED_PREFILL_CHUNK = 1024  # tokens a chunk holds at least (and two windows at least)
WINDOWED_PREFILL_MIN_CHUNKS = 2  # a prompt of at most this many chunks goes in one pass


def prefill_bounds(layout: AttentionLayout | None, n_tokens: int, chunk: int = WINDOWED_PREFILL_CHUNK) -> list[int]:
    """Where the chunks of an ``n_tokens``-token prefill end (ascending, the last is ``n_tokens``): one chunk unless
    the model has sliding-window layers and the prompt is more than ``WINDOWED_PREFILL_MIN_CHUNKS`` chunks of
    ``max(chunk, 2 * window)`` tokens long."""
    if layout is None or not layout.sliding_layers or layout.chain_only is not None:
        return [n_tokens]
    chunk = max(int(chunk), 2 * int(layout.sliding_window))
    if n_tokens <= WINDOWED_PREFILL_MIN_CHUNKS * chunk:
        return [n_tokens]
    return list(range(chunk, n_tokens, chunk)) + [n_tokens]


def prefill(model, prompt: np.ndarray, cache, device: torch.device, layout: AttentionLayout | None = None,
            chunk: int = WINDOWED_PREFILL_CHUNK) -> None:
    """Run ``prompt[:-1]`` (int64[P]) through ``model`` into ``cache``; the last prompt token is left for the first
    tree's root. Only the last position's logits are computed (and dropped). With ``layout`` (the model's), a long
    prompt on a model with sliding-window layers goes in chunks (``prefill_bounds``)."""
    if len(prompt) <= 1:
        return
    tokens = torch.from_numpy(prompt[:-1]).to(device)[None]
    bounds = prefill_bounds(layout, tokens.shape[1], chunk)
    model(input_ids=tokens[:, : bounds[0]], **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
    for start, end in zip(bounds[:-1], bounds[1:]):
        n = end - start
        sliding_from = window_start(layout, start)
        layers = windowed_layers(cache, layout.sliding_layers)
        if layers is None:
            sliding_from = 0
        mask = tree_attention_mask(layout, np.tril(np.ones((n, n), dtype=bool)), np.arange(n), start,
                                   next(model.parameters()).dtype, device, sliding_from=sliding_from)
        with windowed_views(layers, sliding_from) if sliding_from else nullcontext():
            model(input_ids=tokens[:, start:end], position_ids=torch.arange(start, end, device=device)[None],
                  attention_mask=mask, **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)


def prefill_batch(model, layout: AttentionLayout, padded: np.ndarray, n_pad: list[int], cache,
                  dtype: torch.dtype, device: torch.device, chunk: int = WINDOWED_PREFILL_CHUNK) -> np.ndarray:
    """Run every row's prompt minus its last token (``padded``: int64 [B, P], row b with ``n_pad[b]`` leading
    padding ids) through ``model`` into ``cache``, in one pass or, for a long batch on a model with sliding-window
    layers, in chunks of columns (``prefill_bounds``); the last tokens are the first trees' roots. Returns the rows'
    first real slots (``n_pad`` as int64[B])."""
    length = padded.shape[1]
    starts = np.asarray(n_pad, dtype=np.int64)
    if length <= 1:
        return starts
    ids = torch.from_numpy(padded[:, :-1]).to(device)
    starts_t = torch.from_numpy(starts).to(device)
    begin = 0
    for end in prefill_bounds(layout, length - 1, chunk):
        mask, positions = padded_prefill_mask(layout, starts_t, end, dtype, first=begin)
        layers = windowed_layers(cache, layout.sliding_layers) if begin else None
        cut = 0
        if layers is not None:  # keys no query of this chunk sees through a window: cut (as a tree pass does)
            mask, cut = cut_sliding_mask(layout, mask, begin)
        with windowed_views(layers, cut) if cut else nullcontext():
            model(input_ids=ids[:, begin:end], position_ids=positions, attention_mask=mask, use_cache=True,
                  logits_to_keep=1, **{cache_keyword(model): cache})
        begin = end
    return starts
