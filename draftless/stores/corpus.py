"""Reading corpora and turning them into one token array for a datastore build.

A corpus is a list of paths; each path is one of

- a ``.jsonl`` file: one document per record, the chosen ``fields`` joined by a newline (``--field question
  --field answer``); without ``fields`` the record's ``"text"`` field is used;
- a directory: every file matching ``glob`` below it (recursively, sorted), one document per file;
- any other file: plain text, one document (large files are read in line-aligned pieces, see ``PIECE_CHARS``).

``tokenize_corpus`` tokenizes the documents with the target's (fast) tokenizer in batches and concatenates them,
separated by one separator token (EOS by default), into an ``int32[n_tokens]`` array.
"""
from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Plain-text files larger than this are tokenized in pieces cut at line ends, so a multi-GB file never becomes one
# Python string; pieces of one file are joined without a separator.
PIECE_CHARS = 1 << 22


@dataclass(frozen=True)
class Piece:
    """A piece of text. ``starts_document`` is False for the later pieces of one large plain-text file."""

    text: str
    starts_document: bool
    n_bytes: int  # bytes of input consumed, for the progress bar


@dataclass
class TokenizedCorpus:
    """``tokens``: int32[n_tokens], documents separated by ``separator_id``."""

    tokens: np.ndarray
    n_documents: int
    n_bytes: int
    separator_id: int
    seconds: float
    decontamination: object = None  # a decontaminate.DecontaminationReport when documents were filtered


def _excluded(path: Path, root: Path, exclude: Sequence[str]) -> bool:
    rel = path.relative_to(root)
    return any(fnmatch.fnmatch(part, pattern) for pattern in exclude for part in rel.parts)


def list_files(directory: Path, glob: str | None = None, exclude: Sequence[str] = ()) -> list[Path]:
    """Files below ``directory`` matching ``glob`` (default: all), sorted for a reproducible token order.

    ``exclude``: fnmatch patterns; a file is skipped when any component of its path relative to ``directory``
    matches one (e.g. ``"site-packages"``, ``"test*"``).
    """
    files = [p for p in directory.rglob(glob or "*") if p.is_file() and not _excluded(p, directory, exclude)]
    return sorted(files)


def _jsonl_text(record: dict, fields: Sequence[str] | None, where: str) -> str:
    names = list(fields) if fields else ["text"]
    parts = []
    for name in names:
        if name not in record:
            raise ValueError(f"{where}: record has no field {name!r} (fields: {sorted(record)}); choose with --field")
        value = record[name]
        if isinstance(value, list):  # e.g. Spec-Bench "turns"
            parts.extend(str(v) for v in value)
        else:
            parts.append(str(value))
    return "\n".join(parts)


def _read_jsonl(path: Path, fields: Sequence[str] | None) -> Iterator[Piece]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object per line, got {type(record).__name__}")
            yield Piece(_jsonl_text(record, fields, f"{path}:{line_no}"), True, len(raw))


def _read_text(path: Path, piece_chars: int) -> Iterator[Piece]:
    first = True
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        while True:
            text = f.read(piece_chars)
            if not text:
                break
            # Cut after a line end, never inside a word: tokens match whole-file tokenization except possibly the
            # whitespace at the cut.
            if len(text) == piece_chars:
                text += f.readline()
            yield Piece(text, first, len(text.encode("utf-8", errors="replace")))
            first = False
    if first:  # an empty file is still a (empty) document
        yield Piece("", True, 0)


def iter_pieces(paths: Iterable[str | Path], fields: Sequence[str] | None = None, glob: str | None = None,
                exclude: Sequence[str] = (), piece_chars: int = PIECE_CHARS) -> Iterator[Piece]:
    """Every document of the corpus, in order (see the module docstring for how paths are read)."""
    for path in map(Path, paths):
        files = list_files(path, glob, exclude) if path.is_dir() else [path] if path.is_file() else None
        if files is None:
            raise FileNotFoundError(f"corpus path not found: {path}")
        for file in files:
            yield from (_read_jsonl(file, fields) if file.suffix == ".jsonl" else _read_text(file, piece_chars))


def corpus_bytes(paths: Iterable[str | Path], glob: str | None = None, exclude: Sequence[str] = ()) -> int:
    """Total input size in bytes (the progress bar's total)."""
    total = 0
    for path in map(Path, paths):
        if path.is_dir():
            total += sum(f.stat().st_size for f in list_files(path, glob, exclude))
        elif path.is_file():
            total += path.stat().st_size
    return total


def separator_token(tokenizer) -> int:
    """The token placed between documents: EOS, else SEP, else BOS."""
    for attr in ("eos_token_id", "sep_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError("the tokenizer has no EOS/SEP/BOS token to separate documents; pass separator_id")


def tokenize_corpus(paths: Sequence[str | Path], tokenizer, fields: Sequence[str] | None = None,
                    glob: str | None = None, exclude: Sequence[str] = (), separator_id: int | None = None,
                    batch_chars: int = 1 << 20, piece_chars: int = PIECE_CHARS,
                    progress: bool = True, exclude_overlap: str | Path | None = None,
                    overlap_n: int = 13) -> TokenizedCorpus:
    """Tokenize every document and concatenate: ``doc0 SEP doc1 SEP ... docN-1`` as int32.

    Documents are sent to the fast tokenizer's batch call in groups of about ``batch_chars`` characters (the Rust
    tokenizer parallelises across a batch). Each batch is converted to int32 at once, so the peak memory is the
    int32 result plus one batch of Python lists. ``exclude_overlap``: drop documents that share a word
    ``overlap_n``-gram with a prompt of that evaluation file (see ``draftless.stores.decontaminate``).
    """
    from tqdm.auto import tqdm

    sep = separator_token(tokenizer) if separator_id is None else int(separator_id)
    vocab_limit = np.iinfo(np.int32).max
    chunks: list[np.ndarray] = []
    sep_arr = np.array([sep], dtype=np.int64)
    n_docs = 0
    n_bytes = 0
    n_tokens = 0
    t0 = time.perf_counter()
    bar = tqdm(total=corpus_bytes(paths, glob, exclude), unit="B", unit_scale=True, desc="tokenize",
               disable=not progress)

    def flush(batch: list[Piece]) -> None:
        nonlocal n_docs, n_bytes, n_tokens
        encoded = tokenizer([p.text for p in batch], add_special_tokens=False, return_attention_mask=False)
        parts: list[np.ndarray] = []
        for piece, ids in zip(batch, encoded["input_ids"]):
            if piece.starts_document:
                if n_docs:
                    parts.append(sep_arr)
                n_docs += 1
            if ids:
                parts.append(np.asarray(ids, dtype=np.int64))
            n_bytes += piece.n_bytes
        if parts:
            # One array per batch, not per document: millions of short records would otherwise cost ~100 bytes of
            # array overhead each.
            joined = np.concatenate(parts)
            if joined.size and (joined.max() > vocab_limit or joined.min() < 0):
                raise ValueError("a token id does not fit in int32")
            chunks.append(joined.astype(np.int32))
            n_tokens += len(joined)
        bar.update(sum(p.n_bytes for p in batch))
        bar.set_postfix(tokens=n_tokens, docs=n_docs, refresh=False)

    pieces = iter_pieces(paths, fields, glob, exclude, piece_chars)
    report = None
    if exclude_overlap:
        from .decontaminate import filter_pieces, new_report

        report = new_report(exclude_overlap, overlap_n)
        pieces = filter_pieces(pieces, exclude_overlap, overlap_n, report=report)
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece.text)
        if chars >= batch_chars:
            flush(batch)
            batch, chars = [], 0
    if batch:
        flush(batch)
    bar.close()
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return TokenizedCorpus(tokens, n_docs, n_bytes, sep, time.perf_counter() - t0, report)
