"""Building a dense store (kind ``"dense"``) from a corpus: run the target over the token stream, PCA-project and
normalise its last-layer hidden states, index them with FAISS (layout and defaults: ``draftless.index.dense_index``).
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..hf.compat import model_path
from ..index.dense_index import DenseStore, index_keys, project
from .indexes import save_index


# ---------------------------------------------------------------------------------------------- hidden states
def model_info(model) -> dict:
    """The model a dense store's keys come from, as its ``meta.json`` records it (name, type, sizes)."""
    config = model.config
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


def iter_hidden_states(model, tokens: np.ndarray, window: int = 256, overlap: int = 32, batch_size: int = 4,
                       progress: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, states)`` covering positions ``0..n-1`` in order: ``states[k]`` is the hidden state after
    reading ``tokens[start + k]``, computed in a window that gives it ``overlap`` or more tokens of context (except
    at the start of the corpus)."""
    from tqdm.auto import tqdm

    n = len(tokens)
    if window <= overlap:
        raise ValueError("window must be larger than overlap")
    stride = window - overlap
    starts = list(range(0, max(n - overlap, 1), stride))
    bar = tqdm(total=n, desc="hidden states", unit="tok", unit_scale=True, disable=not progress)
    i = 0
    while i < len(starts):
        # full windows batch together; a short last window runs alone
        group = []
        while i < len(starts) and len(group) < batch_size and starts[i] + window <= n:
            group.append(starts[i])
            i += 1
        if not group:
            group = [starts[i]]
            i += 1
        length = min(window, n - group[0])
        ids = np.stack([tokens[s: s + length] for s in group]).astype(np.int64)
        states = hidden_states(model, ids)
        for s, h in zip(group, states):
            skip = 0 if s == 0 else overlap
            yield s + skip, h[skip:]
            bar.update(len(h) - skip)
    bar.close()


# ---------------------------------------------------------------------------------------------- PCA
def fit_pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(components float32[dim, H], mean float32[H])`` of ``sample`` float[N, H] by SVD."""
    x = np.asarray(sample, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    dim = min(int(dim), vt.shape[0])
    return vt[:dim].astype(np.float32), mean.astype(np.float32)


def build_dense_store(model, tokens, dim: int = 96, index: str = "ivf", window: int = 256, overlap: int = 32,
                      batch_size: int = 4, pca_sample: int = 32768, separator_id: int | None = None,
                      progress: bool = True, index_kw: Mapping | None = None,
                      timings: dict | None = None) -> DenseStore:
    """Run ``model`` over ``tokens`` and build a ``DenseStore`` in memory (see the module docstring)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.int32)
    n = len(tokens)
    if n < 2:
        raise ValueError("a dense store needs at least two tokens")
    hidden = int(model_info(model)["hidden_size"])
    dim = min(int(dim), hidden)
    t0 = time.perf_counter()
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
    t1 = time.perf_counter()
    nxt = np.empty(n, dtype=np.int64)
    nxt[:-1] = tokens[1:]
    nxt[-1] = -1
    useful = nxt >= 0
    if separator_id is not None:
        useful &= nxt != separator_id
    positions = np.flatnonzero(useful).astype(np.int32)
    kept = np.ascontiguousarray(keys[positions])
    del keys
    idx = index_keys(kept, index, **dict(index_kw or {}))
    t2 = time.perf_counter()
    if timings is not None:
        timings.update({"encode_s": t1 - t0, "index_s": t2 - t1})
    meta = {"model": model_info(model), "index_type": index, "window": window, "overlap": overlap,
            "separator_id": separator_id}
    return DenseStore(tokens, positions, components, mean, idx, meta)


# ---------------------------------------------------------------------------------------------- build_store hook
def build_dense(tokens: np.ndarray, out_dir: Path, identity: Mapping, build_args: Mapping, extra_meta: Mapping,
                vocab_size: int | None = None, model=None, dim: int = 96, index: str = "ivf", window: int = 256,
                overlap: int = 32, batch_size: int = 4, pca_sample: int = 32768, max_tokens: int | None = None,
                progress: bool = True) -> dict:
    """``draftless.stores.build`` builder for kind ``"dense"``. ``model``: a loaded HF model or a name for
    ``draftless.hf.loading.load_model`` (required). ``max_tokens``: index only the first that many corpus tokens (the
    model pass costs ~3 ms per token on one CPU core for a 135M model)."""
    if model is None:
        raise ValueError("a dense store needs the target model (pass model=NAME_OR_PATH)")
    if isinstance(model, (str, os.PathLike)):
        from ..hf.loading import load_model

        model, _ = load_model(str(model))
    tokens = np.asarray(tokens, dtype=np.int32)
    sep = extra_meta.get("separator_id")
    if max_tokens is not None and len(tokens) > int(max_tokens):
        cut = int(max_tokens)
        if sep is not None:  # end at a document boundary when there is one
            seps = np.flatnonzero(tokens[:cut] == sep)
            cut = int(seps[-1]) if len(seps) else cut
        tokens = tokens[:cut]
    timings: dict = {}
    store = build_dense_store(model, tokens, dim=dim, index=index, window=window, overlap=overlap,
                              batch_size=batch_size, pca_sample=pca_sample, separator_id=sep, progress=progress,
                              timings=timings)
    t0 = time.perf_counter()
    save_index(store, out_dir, identity, build_args, extra_meta)
    timings["write_s"] = time.perf_counter() - t0
    timings["n_keys"] = len(store)
    timings["indexed_tokens"] = len(tokens)
    timings["encode_tok_per_s"] = len(tokens) / max(timings["encode_s"], 1e-9)
    return timings


def warm_dense() -> None:
    """Load the lookup kernels the drafter uses."""
    from ..index.kernels import suffix_array_kernels as K

    K.continuation_trie(np.arange(4, dtype=np.int32), np.zeros(1, dtype=np.int64), np.ones(1), 2, -1, 8)
