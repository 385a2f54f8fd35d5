"""Dense stores built on Ray Data: ``draftless build --kind dense --ray [--address ADDR] [--num-cpus N]``.

The pipeline (the store it writes is the one the in-process build, ``dense_build.build_dense``, writes):

1. **Tokenize** (driver): the corpus read, decontaminated and tokenized as ``build_store`` does
   (``corpus.tokenize_corpus``) and cut to ``max_tokens`` at a document boundary (``dense_build.cut_tokens``). The
   model's config (not its weights) is read here for its hidden size and the store's meta, so a missing model fails
   before Ray starts.
2. **Plan** (driver): the forward batches of ``dense_build.window_batches``, one dataset row each: the span of
   corpus tokens its windows cover and their starts (fixed-shape, padded). The in-process build runs exactly these
   batches, so both compute the same hidden states.
3. **Sample pass** (Ray Data): ``map_batches`` of ``EncodeWindows``, a callable class whose actors each load the
   model once (``hf.loading.load_model`` on the model's *name or folder*, torch threads = the actor's CPUs), over
   the rows that reach into positions ``0 .. pca_sample - 1``; they return raw last-layer hidden states. The
   driver fits the PCA on those positions' states (``dense_build.fit_pca``, the in-process sample) and projects them.
4. **Key pass** (Ray Data): the other rows through actors that also hold the PCA and return projected, normalised
   keys float32[., dim]; the driver streams them into the key array by position.
5. **Index and write** (driver): ``dense_build.store_from_keys`` (FAISS, any ``index`` kind) and
   ``dense_build.write_dense_store`` (atomic, ``save_index``).

Tokenizing, indexing and the keys (``dim`` floats per token) stay on the driver; the model pass, a thousand times
slower per token than the rest on a CPU, is what spreads over the cluster. With no ``address`` Ray is started here
(``num_cpus``, a small object store, no dashboard, quiet logs) and shut down after; with one, the cluster's workers
need draftless installed and the model at the same name or path.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..index.dense_index import INDEX_TYPES, project
from ..tokenizer_identity import tokenizer_identity
from .build import BuildReport, _jsonable
from .corpus import tokenize_corpus
from .dense_build import (
    batch_states,
    cut_tokens,
    fit_pca,
    model_info,
    store_from_keys,
    window_batches,
    write_dense_store,
)
from .ray_build import _quiet_ray_data, _require_ray, _start_ray


# ---------------------------------------------------------------------------------------------- plan
def plan_rows(tokens: np.ndarray, window: int, overlap: int, batch_size: int) -> list[dict]:
    """The dataset rows of step 2: per forward batch ``{"first": its first key position, "starts": int64[batch_size]
    window starts padded with -1, "span": int32[(batch_size - 1) * stride + window] the tokens from the first start
    on, padded with 0, "span_len": tokens in it}``."""
    n = len(tokens)
    span_max = (batch_size - 1) * (window - overlap) + window
    rows = []
    for group in window_batches(n, window, overlap, batch_size):
        end = group[-1] + min(window, n - group[-1])
        span = np.zeros(span_max, dtype=np.int32)
        span[: end - group[0]] = tokens[group[0]: end]
        starts = np.full(batch_size, -1, dtype=np.int64)
        starts[: len(group)] = group
        rows.append({"first": group[0] if group[0] == 0 else group[0] + overlap, "starts": starts, "span": span,
                     "span_len": end - group[0]})
    return rows


# ---------------------------------------------------------------------------------------------- the Ray work
class EncodeWindows:
    """Ray Data actor: loads the model once, then turns plan rows into ``{"first", "count", "values"}``: the hidden
    states (no PCA given) or keys (with one) of positions ``first .. first + count - 1``, padded to
    float32[batch_size * window, width]."""

    def __init__(self, model: str, window: int, overlap: int, threads: int, components: np.ndarray | None = None,
                 mean: np.ndarray | None = None):
        import torch

        from ..hf.loading import load_model

        torch.set_num_threads(max(1, int(threads)))
        self.model, _ = load_model(model)
        self.window, self.overlap = int(window), int(overlap)
        self.components, self.mean = components, mean

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"first": [], "count": [], "values": []}
        for starts, span, span_len in zip(batch["starts"], batch["span"], batch["span_len"]):
            group = [int(s) for s in starts if s >= 0]
            parts = batch_states(self.model, np.asarray(span[: int(span_len)]), group, self.window, self.overlap,
                                 offset=group[0])
            states = np.concatenate([h for _, h in parts])
            if self.components is not None:
                states = project(states, self.components, self.mean)
            values = np.zeros((len(starts) * self.window, states.shape[1]), dtype=np.float32)
            values[: len(states)] = states
            out["first"].append(parts[0][0])
            out["count"].append(len(states))
            out["values"].append(values)
        return {"first": np.asarray(out["first"], dtype=np.int64), "count": np.asarray(out["count"], dtype=np.int64),
                "values": np.stack(out["values"])}


def _encode_stage(ray, rows: list[dict], cpus: int, cpus_per_actor: int, args: tuple):
    """``map_batches`` of ``EncodeWindows`` over ``rows``: one forward batch a call, ``cpus_per_actor`` CPUs (and
    torch threads) an actor, as many actors as the CPUs hold. ``max_restarts=0`` as in ``ray_build``: a lost actor
    fails the build rather than restarting without its constructor arguments (ray-project/ray#53727)."""
    actors = max(1, min(cpus // cpus_per_actor, len(rows)))
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * actors))
    common = dict(fn_constructor_args=args, batch_size=1, num_cpus=cpus_per_actor, concurrency=actors,
                  batch_format="numpy", runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return ds.map_batches(EncodeWindows, max_restarts=0, **common)
        except TypeError:  # a later Ray that no longer takes it
            return ds.map_batches(EncodeWindows, **common)


def _collect(ds, out: np.ndarray) -> None:
    """Stream the stage's rows into ``out`` by position."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for first, count, values in zip(batch["first"], batch["count"], batch["values"]):
            out[int(first): int(first) + int(count)] = values[: int(count)]


def encode_keys_ray(ray, model: str, tokens: np.ndarray, dim: int, hidden: int, window: int = 256, overlap: int = 32,
                    batch_size: int = 4, pca_sample: int = 32768,
                    cpus_per_actor: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 2-4 on a running Ray: ``(keys float32[n, dim], components float32[dim, H], mean float32[H])``, the
    same as ``dense_build.encode_keys`` computes in process for the same model and batches."""
    n = len(tokens)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    cpus_per_actor = max(1, min(int(cpus_per_actor), cpus))
    rows = plan_rows(tokens, window, overlap, batch_size)
    n_sample = next((i for i, r in enumerate(rows) if r["first"] >= pca_sample), len(rows))
    covered = rows[n_sample]["first"] if n_sample < len(rows) else n
    sample = np.empty((covered, hidden), dtype=np.float32)
    _collect(_encode_stage(ray, rows[:n_sample], cpus, cpus_per_actor, (model, window, overlap, cpus_per_actor)),
             sample)
    components, mean = fit_pca(sample[:pca_sample], dim)
    keys = np.empty((n, components.shape[0]), dtype=np.float32)
    keys[:covered] = project(sample, components, mean)
    del sample
    if n_sample < len(rows):
        args = (model, window, overlap, cpus_per_actor, components, mean)
        _collect(_encode_stage(ray, rows[n_sample:], cpus, cpus_per_actor, args), keys)
    return keys, components, mean


# ---------------------------------------------------------------------------------------------- driver
def build_dense_store_ray(corpus_paths: Sequence[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
                          model: str | os.PathLike, fields: Sequence[str] | None = None, glob: str | None = None,
                          exclude: Sequence[str] = (), exclude_overlap: str | os.PathLike | None = None,
                          dim: int = 96, index: str = "ivf", window: int = 256, overlap: int = 32,
                          batch_size: int = 4, pca_sample: int = 32768, max_tokens: int | None = None,
                          address: str | None = None, num_cpus: int | None = None, cpus_per_actor: int = 1,
                          object_store_bytes: int = 512 << 20, provenance: Mapping | None = None,
                          progress: bool = True, verbose: bool = True) -> BuildReport:
    """Build a ``"dense"`` store at ``out_dir`` with the model pass on Ray Data (the module docstring's pipeline).

    ``model``: the target's name or HF folder (each actor loads it; a loaded model cannot travel); ``tokenizer``: its
    tokenizer, for the corpus. The other options are ``build_dense``'s; ``cpus_per_actor``: CPUs (and torch
    threads) per model copy. Returns a ``BuildReport`` whose ``build_s`` covers the model pass, indexing and writing.
    """
    from transformers import AutoConfig

    from ..hf.loading import resolve_model_path

    if not isinstance(model, (str, os.PathLike)):
        raise TypeError("a Ray build loads the model in each actor: pass its name or folder, not a loaded model")
    if index not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index!r}; choose from {INDEX_TYPES}")
    window_batches(2, window, overlap, batch_size)  # refuses a bad window / overlap / batch size now
    ray = _require_ray()
    folder = resolve_model_path(str(model))  # a missing model fails here, before Ray starts
    config = AutoConfig.from_pretrained(str(folder))
    info = model_info(config)
    dim = min(int(dim), info["hidden_size"])
    identity = tokenizer_identity(tokenizer)
    corpus = tokenize_corpus(corpus_paths, tokenizer, fields=fields, glob=glob, exclude=exclude, progress=progress,
                             exclude_overlap=exclude_overlap)
    if len(corpus.tokens) < 2:
        raise ValueError(f"the corpus {list(map(str, corpus_paths))} holds fewer than two tokens (check --glob / "
                         f"--field)")
    sep = corpus.separator_id
    tokens = cut_tokens(corpus.tokens, max_tokens, sep)
    build_args = {"kind": "dense", "corpus": [str(p) for p in corpus_paths], "fields": list(fields) if fields else None,
                  "glob": glob, "exclude": list(exclude),
                  "exclude_overlap": str(exclude_overlap) if exclude_overlap else None, "model": str(model),
                  "dim": dim, "index": index, "window": window, "overlap": overlap, "batch_size": batch_size,
                  "pca_sample": pca_sample, "max_tokens": max_tokens, "ray": True,
                  **{k: _jsonable(v) for k, v in (provenance or {}).items()}}
    extra_meta = {"separator_id": sep, "n_documents": corpus.n_documents, "corpus_bytes": corpus.n_bytes}
    if corpus.decontamination is not None:
        extra_meta["decontamination"] = corpus.decontamination.to_json()
    started = _start_ray(ray, address, num_cpus, object_store_bytes)
    restore = _quiet_ray_data(ray)
    t0 = time.perf_counter()
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        keys, components, mean = encode_keys_ray(ray, str(folder) if not address else str(model), tokens, dim,
                                                 info["hidden_size"], window, overlap, batch_size, pca_sample,
                                                 cpus_per_actor)
    finally:
        restore()
        if started:
            ray.shutdown()
    t1 = time.perf_counter()
    meta = {"model": info, "window": window, "overlap": overlap}
    store = store_from_keys(tokens, keys, components, mean, index, sep, meta)
    del keys
    timings = {"encode_s": t1 - t0, "index_s": time.perf_counter() - t1, "ray_cpus": cpus}
    write_dense_store(store, Path(out_dir), identity, build_args, extra_meta, timings)
    out = Path(out_dir)
    disk = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    report = BuildReport("dense", out, len(corpus.tokens), corpus.n_documents, corpus.seconds,
                         time.perf_counter() - t0, disk, None, timings)
    if verbose:
        print(report.summary(), flush=True)
    return report
