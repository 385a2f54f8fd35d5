"""``build_store``: corpus files -> target-tokenizer token array -> a datastore directory of one kind;
``build_sharded_store``: corpus files -> a sharded ``"rest"`` store (``sharded.py``), one shard at a time in this
process (``ray_build.py`` builds the same on Ray).

Store kinds and their builders are registered in ``kinds.py`` (``BUILDERS``, the one registry).

``build_store`` prints the build time, the throughput excluding tokenization, bytes per token on disk and the peak
resident memory the build added.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..tokenizer_identity import tokenizer_identity
from .corpus import BATCH_CHARS, tokenize_corpus
from .kinds import BUILDERS


@dataclass
class BuildReport:
    kind: str
    out_dir: Path
    n_tokens: int
    n_documents: int
    tokenize_s: float
    build_s: float  # everything after tokenization: construction and writing the store
    disk_bytes: int
    peak_rss_bytes: int | None  # resident memory the build phase added at its peak (Linux), None if unknown
    stats: dict = field(default_factory=dict)

    @property
    def indexed_tokens(self) -> int:
        """Tokens the store covers (a dense build may index only a prefix of the corpus)."""
        return int(self.stats.get("indexed_tokens", self.n_tokens))

    @property
    def tokens_per_s(self) -> float:
        return self.indexed_tokens / self.build_s if self.build_s > 0 else float("inf")

    @property
    def bytes_per_token(self) -> float:
        return self.disk_bytes / max(self.indexed_tokens, 1)

    def summary(self) -> str:
        mb = 1 / 1e6
        lines = [
            f"[draftless] {self.kind} store: {self.n_tokens:,} tokens ({self.n_documents:,} documents) "
            f"-> {self.out_dir}",
            f"  tokenize {self.tokenize_s:.1f} s ({self.n_tokens / max(self.tokenize_s, 1e-9) / 1e6:.2f}M tok/s)"
            f" | build {self.build_s:.2f} s ({self.tokens_per_s:,.0f} tok/s excluding tokenization"
            + (f", {self.indexed_tokens:,} tokens indexed" if self.indexed_tokens != self.n_tokens else "") + ")",
            f"  disk {self.disk_bytes * mb:.1f} MB = {self.bytes_per_token:.1f} bytes/token",
        ]
        if self.peak_rss_bytes is not None:
            lines[-1] += (f" | peak memory added by the build {self.peak_rss_bytes * mb:.0f} MB"
                          f" = {self.peak_rss_bytes / max(self.n_tokens, 1):.0f} bytes/token")
        details = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v:,}" for k, v in self.stats.items())
        if details:
            lines.append(f"  {details}")
        return "\n".join(lines)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0) so the next reading covers the build phase only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def release_free_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc's ``malloc_trim``; nothing elsewhere): the tokenizer's
    freed batch buffers, ~200 MB here, would otherwise stay resident under the index construction that follows."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def build_store(kind: str, corpus_paths: Sequence[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
                fields: Sequence[str] | None = None, glob: str | None = None, exclude: Sequence[str] = (),
                progress: bool = True, verbose: bool = True, provenance: Mapping | None = None,
                exclude_overlap: str | os.PathLike | None = None, overlap_n: int = 13, **opts) -> BuildReport:
    """Tokenize ``corpus_paths`` with ``tokenizer`` and build a ``kind`` datastore at ``out_dir``.

    ``fields``: jsonl fields joined per record; ``glob``/``exclude``: which files of a directory to read (see
    ``draftless.stores.corpus``); ``opts`` go to the kind's builder. Returns a ``BuildReport`` (also printed unless
    ``verbose=False``). ``provenance``: extra facts recorded in the store's build arguments (e.g. how a
    self-distilled corpus was generated). ``exclude_overlap``: an evaluation prompt file (Spec-Bench jsonl); corpus
    documents sharing a word ``overlap_n``-gram with any of its prompts are left out, and what was left out is
    printed and recorded in the store's meta.
    """
    builder = BUILDERS.get(kind)
    if builder is None:
        raise ValueError(f"unknown datastore kind {kind!r}; known: {', '.join(sorted(BUILDERS))}")
    identity = tokenizer_identity(tokenizer)
    rss_start = _rss_bytes()
    start_tracked = _reset_peak_rss()
    corpus = tokenize_corpus(corpus_paths, tokenizer, fields=fields, glob=glob, exclude=exclude, progress=progress,
                             exclude_overlap=exclude_overlap, overlap_n=overlap_n)
    tokenize_peak = _peak_rss_bytes() if start_tracked else None
    release_free_heap()
    if len(corpus.tokens) == 0:
        raise ValueError(f"the corpus {list(map(str, corpus_paths))} holds no tokens (check --glob / --field)")
    build_args = {
        "kind": kind,
        "corpus": [str(p) for p in corpus_paths],
        "fields": list(fields) if fields else None,
        "glob": glob,
        "exclude": list(exclude),
        "exclude_overlap": str(exclude_overlap) if exclude_overlap else None,
        **{k: _jsonable(v) for k, v in opts.items()},
        **{k: _jsonable(v) for k, v in (provenance or {}).items()},
    }
    extra_meta = {"separator_id": corpus.separator_id, "n_documents": corpus.n_documents,
                  "corpus_bytes": corpus.n_bytes}
    if corpus.decontamination is not None:
        extra_meta["decontamination"] = corpus.decontamination.to_json()
        if verbose:
            print(corpus.decontamination.summary(), flush=True)
    if builder.warmup is not None:
        builder.warmup()
    rss_before = _rss_bytes()
    peak_tracked = _reset_peak_rss()
    t0 = time.perf_counter()
    stats = builder.build(corpus.tokens, Path(out_dir), identity, build_args, extra_meta,
                    vocab_size=identity["vocab_size"], **opts)
    build_s = time.perf_counter() - t0
    peak = _peak_rss_bytes() if peak_tracked else None
    if None not in (peak, tokenize_peak, rss_start):  # tokenization and build together, the corpus's tokens included
        stats["peak_rss_end_to_end"] = max(peak, tokenize_peak) - rss_start
    out = Path(out_dir)
    disk = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    report = BuildReport(kind, out, len(corpus.tokens), corpus.n_documents, corpus.seconds, build_s, disk,
                         peak - rss_before if peak is not None and rss_before is not None else None, stats)
    if verbose:
        print(report.summary(), flush=True)
    return report


def _doc_join(docs: list[np.ndarray], sep: int) -> np.ndarray:
    """Documents (each a list of int32 arrays, its pieces) joined by ``sep``: one shard's tokens."""
    parts: list[np.ndarray] = []
    sep_arr = np.array([sep], dtype=np.int32)
    for i, doc in enumerate(docs):
        if i:
            parts.append(sep_arr)
        parts.extend(doc)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def build_sharded_store(corpus_paths: Sequence[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
                        shards: int, fields: Sequence[str] | None = None, glob: str | None = None,
                        exclude: Sequence[str] = (), progress: bool = True, verbose: bool = True,
                        provenance: Mapping | None = None, exclude_overlap: str | os.PathLike | None = None,
                        overlap_n: int = 13, sa_method: str | None = None,
                        batch_chars: int = BATCH_CHARS) -> BuildReport:
    """A sharded ``"rest"`` store in this process, in memory bounded by one shard (``draftless.stores.sharded``).

    The corpus is read and tokenized as a stream (as ``build_store`` does); a shard is cut at the first document
    boundary after each ``1 / shards`` of the corpus bytes, its suffix array built and written, and its tokens
    dropped before the next is read. The manifest is written last. Peak memory: one shard's tokens and its
    construction (about 16 bytes per shard token with libdivsufsort), not the corpus's.
    """
    from .corpus import encode_batches, separator_token
    from .decontaminate import filter_pieces, new_report
    from .documents import corpus_bytes, iter_pieces
    from .sharded import prepare_sharded_dir, write_manifest, write_shard

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    identity = tokenizer_identity(tokenizer)
    sep = separator_token(tokenizer)
    total_bytes = corpus_bytes(corpus_paths, glob, exclude)
    build_args = {"kind": "rest", "corpus": [str(p) for p in corpus_paths], "fields": list(fields) if fields else None,
                  "glob": glob, "exclude": list(exclude), "exclude_overlap": str(exclude_overlap) if exclude_overlap
                  else None, "shards": int(shards), "sa_method": sa_method,
                  **{k: _jsonable(v) for k, v in (provenance or {}).items()}}
    out = prepare_sharded_dir(out_dir)
    rss_before = _rss_bytes()
    peak_tracked = _reset_peak_rss()
    t_start = time.perf_counter()
    build_s = 0.0
    written: list[dict] = []
    docs: list[list[np.ndarray]] = []  # the current shard's documents, each its pieces' arrays
    consumed = 0
    n_bytes = 0

    def flush() -> None:
        nonlocal build_s, docs
        t0 = time.perf_counter()
        tokens = _doc_join(docs, sep)
        n_docs = len(docs)
        docs = []
        written.append(write_shard(tokens, out, len(written), sep, identity, n_docs, build_args, sa_method))
        build_s += time.perf_counter() - t0

    pieces = iter_pieces(corpus_paths, fields, glob, exclude)
    report = None
    if exclude_overlap:
        report = new_report(exclude_overlap, overlap_n)
        pieces = filter_pieces(pieces, exclude_overlap, overlap_n, report=report)
    for batch, encoded in encode_batches(pieces, tokenizer, batch_chars):
        for piece, ids in zip(batch, encoded):
            if piece.starts_document:
                if docs and len(written) < shards - 1 and consumed >= total_bytes * (len(written) + 1) / shards:
                    flush()
                docs.append([])
            if ids:
                arr = np.asarray(ids, dtype=np.int64)
                if arr.max() > np.iinfo(np.int32).max or arr.min() < 0:
                    raise ValueError("a token id does not fit in int32")
                docs[-1].append(arr.astype(np.int32))
            consumed += piece.n_bytes
            n_bytes += piece.n_bytes
    if docs:
        flush()
    if not written or sum(w["n_tokens"] for w in written) == 0:
        raise ValueError(f"the corpus {list(map(str, corpus_paths))} holds no tokens (check --glob / --field)")
    extra = {"corpus_bytes": n_bytes}
    if report is not None:
        extra["decontamination"] = report.to_json()
        if verbose:
            print(report.summary(), flush=True)
    t0 = time.perf_counter()
    manifest = write_manifest(out, [w["name"] for w in written], identity, sep, build_args, extra)
    build_s += time.perf_counter() - t0
    total_s = time.perf_counter() - t_start
    peak = _peak_rss_bytes() if peak_tracked else None
    disk = sum(s["bytes"] for s in manifest["shards"]) + (out / "manifest.json").stat().st_size
    stats = {"shards": len(written), "construct_s": sum(w["construct_s"] for w in written),
             "write_s": sum(w["write_s"] for w in written),
             "largest_shard_tokens": max(w["n_tokens"] for w in written)}
    result = BuildReport("rest", out, manifest["n_tokens"], manifest["n_documents"], total_s - build_s, build_s, disk,
                         peak - rss_before if peak is not None and rss_before is not None else None, stats)
    if verbose:
        print(result.summary(), flush=True)
    return result
