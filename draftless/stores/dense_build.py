"""Building a dense store (kind ``"dense"``) from a corpus: run the target over the token stream, PCA-project and
normalise its last-layer hidden states, index them with FAISS (layout and defaults: ``draftless.index.dense_index``).

The model pass runs in fixed forward batches (``window_batches``, ``batch_states``) that ``encode_keys`` runs here
and ``draftless.stores.ray_dense_build`` runs on Ray Data; ``store_from_keys`` indexes the keys either produced.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..hf.compat import model_path
from ..index.dense_index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    INDEX_TYPES,
    IVFPQ_NPROBE,
    DenseStore,
    index_keys,
    project,
)
from .indexes import save_index


# ---------------------------------------------------------------------------------------------- hidden states
def model_info(model) -> dict:
    """The model a dense store's keys come from, as its ``meta.json`` records it (name, type, sizes). ``model``: a
    loaded model or its config (a build on Ray reads only the config here)."""
    config = getattr(model, "config", model)
    text = getattr(config, "get_text_config", lambda: config)()
    return {
        "name": os.path.basename(os.path.normpath(model_path(config))) or "unknown",
        "model_type": getattr(text, "model_type", None),
        "hidden_size": int(text.hidden_size),
        "num_hidden_layers": int(getattr(text, "num_hidden_layers", 0) or 0),
        "vocab_size": int(text.vocab_size),
    }


def hidden_states(model, input_ids) -> np.ndarray:
    """float32[B, T, H]: last-layer hidden states as the engine reads them (``hidden_states[-1]``)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.as_tensor(input_ids, dtype=torch.long, device=device),
                    output_hidden_states=True, use_cache=False, logits_to_keep=1)
    return out.hidden_states[-1].float().cpu().numpy()


def window_batches(n: int, window: int = 256, overlap: int = 32, batch_size: int = 4) -> list[list[int]]:
    """The model pass's forward batches over ``n`` tokens: lists of window starts, in order. Windows start every
    ``window - overlap`` tokens; up to ``batch_size`` full windows share a forward, a short last window runs alone.
    Both builds (in process and on Ray) run exactly these batches, so their hidden states are the same computation."""
    if window <= overlap:
        raise ValueError("window must be larger than overlap")
    if batch_size < 1 or overlap < 0:
        raise ValueError(f"batch_size must be >= 1 and overlap >= 0, got {batch_size}, {overlap}")
    stride = window - overlap
    starts = list(range(0, max(n - overlap, 1), stride))
    batches: list[list[int]] = []
    i = 0
    while i < len(starts):
        group = []
        while i < len(starts) and len(group) < batch_size and starts[i] + window <= n:
            group.append(starts[i])
            i += 1
        if not group:
            group = [starts[i]]
            i += 1
        batches.append(group)
    return batches


def batch_states(model, tokens: np.ndarray, group: list[int], window: int, overlap: int,
                 offset: int = 0) -> list[tuple[int, np.ndarray]]:
    """One forward batch of ``window_batches``: per window ``(first, states float32[c, H])``, the hidden states of
    corpus positions ``first .. first + c - 1`` (a window's first ``overlap`` states are dropped, except in the
    corpus's first window: they are its context only). Consecutive windows' spans are contiguous. ``tokens``: the
    corpus from position ``offset`` on, through the batch's windows (to the corpus end for a short last window)."""
    length = min(window, offset + len(tokens) - group[0])
    ids = np.stack([tokens[s - offset: s - offset + length] for s in group]).astype(np.int64)
    states = hidden_states(model, ids)
    return [(s, h) if s == 0 else (s + overlap, h[overlap:]) for s, h in zip(group, states)]


def iter_hidden_states(model, tokens: np.ndarray, window: int = 256, overlap: int = 32, batch_size: int = 4,
                       progress: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, states)`` covering positions ``0..n-1`` in order: ``states[k]`` is the hidden state after
    reading ``tokens[start + k]``, computed in a window that gives it ``overlap`` or more tokens of context (except
    at the start of the corpus). One item per window, windows forwarded in the batches of ``window_batches``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tokens), desc="hidden states", unit="tok", unit_scale=True, disable=not progress)
    for group in window_batches(len(tokens), window, overlap, batch_size):
        for start, states in batch_states(model, tokens, group, window, overlap):
            yield start, states
            bar.update(len(states))
    bar.close()


# ---------------------------------------------------------------------------------------------- PCA
def fit_pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(components float32[dim, H], mean float32[H])`` of ``sample`` float[N, H] by SVD."""
    x = np.asarray(sample, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    dim = min(int(dim), vt.shape[0])
    return vt[:dim].astype(np.float32), mean.astype(np.float32)


def encode_keys(model, tokens: np.ndarray, dim: int = 96, window: int = 256, overlap: int = 32, batch_size: int = 4,
                pca_sample: int = 32768, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model pass in this process: ``(keys float32[n, dim], components float32[dim, H], mean float32[H])``,
    key ``i`` the projected, normalised state after ``tokens[i]``. The PCA is fit on the states of positions
    ``0 .. pca_sample - 1`` (the first forward batches, held until they cover the sample)."""
    n = len(tokens)
    dim = min(int(dim), int(model_info(model)["hidden_size"]))
    keys = np.empty((n, dim), dtype=np.float32)
    pending: list[tuple[int, np.ndarray]] = []
    n_pending = 0
    components = mean = None
    for start, states in iter_hidden_states(model, tokens, window, overlap, batch_size, progress):
        if components is None:
            pending.append((start, states))
            n_pending += len(states)
            if n_pending < pca_sample and start + len(states) < n:
                continue
            components, mean = fit_pca(np.concatenate([s for _, s in pending])[:pca_sample], dim)
            for s0, st in pending:
                keys[s0: s0 + len(st)] = project(st, components, mean)
            pending = []
            continue
        keys[start: start + len(states)] = project(states, components, mean)
    return keys, components, mean


def indexed_positions(tokens: np.ndarray, separator_id: int | None) -> np.ndarray:
    """int32[m]: the positions that get a key: every one whose next token exists and is not the separator."""
    nxt = np.empty(len(tokens), dtype=np.int64)
    nxt[:-1] = tokens[1:]
    nxt[-1] = -1
    useful = nxt >= 0
    if separator_id is not None:
        useful &= nxt != separator_id
    return np.flatnonzero(useful).astype(np.int32)


def store_from_keys(tokens: np.ndarray, keys: np.ndarray, components: np.ndarray, mean: np.ndarray,
                    index: str = "ivf", separator_id: int | None = None, meta: Mapping | None = None,
                    index_kw: Mapping | None = None) -> DenseStore:
    """A ``DenseStore`` over ``keys`` float32[n, dim] (one per corpus position, from ``encode_keys`` or the Ray
    build): the keys of ``indexed_positions`` in a FAISS index of kind ``index``. An ``"ivfpq"`` index takes the
    positions as its ids (no positions array, see ``draftless.index.dense_index``)."""
    positions = indexed_positions(tokens, separator_id)
    kept = np.ascontiguousarray(keys[positions])
    kw = dict(index_kw or {})
    if index == "ivfpq":
        idx = index_keys(kept, index, ids=positions, **kw)
        positions = None
    else:
        idx = index_keys(kept, index, **kw)
    search = {"nprobe": int(kw.get("nprobe", IVFPQ_NPROBE if index == "ivfpq" else DEFAULT_NPROBE)),
              "ef_search": DEFAULT_EF_SEARCH}
    full_meta = {**dict(meta or {}), "index_type": index, "separator_id": separator_id, "search": search}
    return DenseStore(tokens, positions, components, mean, idx, full_meta)


def build_dense_store(model, tokens, dim: int = 96, index: str = "ivf", window: int = 256, overlap: int = 32,
                      batch_size: int = 4, pca_sample: int = 32768, separator_id: int | None = None,
                      progress: bool = True, index_kw: Mapping | None = None,
                      timings: dict | None = None) -> DenseStore:
    """Run ``model`` over ``tokens`` and build a ``DenseStore`` in memory (see the module docstring)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    if len(tokens) < 2:
        raise ValueError("a dense store needs at least two tokens")
    if index not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index!r}; choose from {INDEX_TYPES}")
    t0 = time.perf_counter()
    keys, components, mean = encode_keys(model, tokens, dim, window, overlap, batch_size, pca_sample, progress)
    t1 = time.perf_counter()
    meta = {"model": model_info(model), "window": window, "overlap": overlap}
    store = store_from_keys(tokens, keys, components, mean, index, separator_id, meta, index_kw)
    t2 = time.perf_counter()
    if timings is not None:
        timings.update({"encode_s": t1 - t0, "index_s": t2 - t1})
    return store


# ---------------------------------------------------------------------------------------------- build_store hook
def cut_tokens(tokens: np.ndarray, max_tokens: int | None, separator_id: int | None) -> np.ndarray:
    """The first ``max_tokens`` corpus tokens (all when None), cut back to the last document boundary in them when
    there is one."""
    tokens = np.asarray(tokens, dtype=np.int32)
    if max_tokens is None or len(tokens) <= int(max_tokens):
        return tokens
    cut = int(max_tokens)
    if separator_id is not None:
        seps = np.flatnonzero(tokens[:cut] == separator_id)
        cut = int(seps[-1]) if len(seps) else cut
    return tokens[:cut]


def write_dense_store(store: DenseStore, out_dir: Path, identity: Mapping, build_args: Mapping,
                      extra_meta: Mapping, timings: dict) -> dict:
    """Write ``store`` (atomically, ``save_index``) and complete a builder's statistics."""
    t0 = time.perf_counter()
    save_index(store, out_dir, identity, build_args, extra_meta)
    timings["write_s"] = time.perf_counter() - t0
    timings["n_keys"] = len(store)
    timings["indexed_tokens"] = len(store.tokens)
    timings["encode_tok_per_s"] = len(store.tokens) / max(timings["encode_s"], 1e-9)
    return timings


def build_dense(tokens: np.ndarray, out_dir: Path, identity: Mapping, build_args: Mapping, extra_meta: Mapping,
                vocab_size: int | None = None, model=None, dim: int = 96, index: str = "ivf", window: int = 256,
                overlap: int = 32, batch_size: int = 4, pca_sample: int = 32768, max_tokens: int | None = None,
                progress: bool = True) -> dict:
    """``draftless.stores.build`` builder for kind ``"dense"``. ``model``: a loaded HF model or a name for
    ``draftless.hf.loading.load_model`` (required). ``max_tokens``: index only the first that many corpus tokens (the
    model pass costs ~3 ms per token on one CPU core for a 135M model)."""
    if model is None:
        raise ValueError("a dense store needs the target model (pass model=NAME_OR_PATH)")
    if index not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index!r}; choose from {INDEX_TYPES}")
    if isinstance(model, (str, os.PathLike)):
        from ..hf.loading import load_model

        model, _ = load_model(str(model))
    tokens = cut_tokens(tokens, max_tokens, extra_meta.get("separator_id"))
    timings: dict = {}
    store = build_dense_store(model, tokens, dim=dim, index=index, window=window, overlap=overlap,
                              batch_size=batch_size, pca_sample=pca_sample,
                              separator_id=extra_meta.get("separator_id"), progress=progress, timings=timings)
    return write_dense_store(store, out_dir, identity, build_args, extra_meta, timings)


def warm_dense() -> None:
    """Load the lookup kernels the drafter uses."""
    from ..index.kernels import suffix_array_kernels as K

    K.continuation_trie(np.arange(4, dtype=np.int32), np.zeros(1, dtype=np.int64), np.ones(1), 2, -1, 8)
