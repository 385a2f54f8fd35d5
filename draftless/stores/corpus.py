"""Turning a corpus into one token array for a datastore build.

A corpus is a list of paths, read into documents by ``documents.py`` (``iter_pieces``: jsonl records, the files
of a directory, plain-text files in line-aligned pieces).

``tokenize_corpus`` tokenizes the documents with the target's (fast) tokenizer in batches and concatenates them,
separated by one separator token (EOS by default), into an ``int32[n_tokens]`` array.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decontaminate import filter_pieces, new_report
from .documents import PIECE_CHARS, Piece, corpus_bytes, iter_pieces

# Characters per call of the Rust tokenizer's batch encoding: large enough that its threads stay busy across the
# uneven documents of a batch (1.7M tokens/s here at 4M characters against 1.4M at 1M), small enough that the
# batch's id lists (~36 bytes a token) stay a few tens of MB.
BATCH_CHARS = 1 << 22


@dataclass
class TokenizedCorpus:
    """``tokens``: int32[n_tokens], documents separated by ``separator_id``."""

    tokens: np.ndarray
    n_documents: int
    n_bytes: int
    separator_id: int
    seconds: float
    decontamination: object = None  # a decontaminate.DecontaminationReport when documents were filtered


def separator_token(tokenizer) -> int:
    """The token placed between documents: EOS, else SEP, else BOS."""
    for attr in ("eos_token_id", "sep_token_id", "bos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError("the tokenizer has no EOS/SEP/BOS token to separate documents; pass separator_id")


def encode_batches(pieces: Iterable[Piece], tokenizer, batch_chars: int = BATCH_CHARS
                   ) -> Iterator[tuple[list[Piece], list[list[int]]]]:
    """``(pieces, their token ids)`` in groups of about ``batch_chars`` characters, each group one call of the
    (fast) tokenizer's batch encoding (the Rust tokenizer parallelises across a batch). No special tokens added."""
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece.text)
        if chars >= batch_chars:
            yield batch, _encode(tokenizer, batch)
            batch, chars = [], 0
    if batch:
        yield batch, _encode(tokenizer, batch)


def _encode(tokenizer, batch: list[Piece]) -> list[list[int]]:
    texts = [p.text for p in batch]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        # The Rust tokenizer's batch call without character offsets (tokenizers >= 0.20): the same ids as the
        # transformers call, 1.4-1.8x faster here, since offsets are most of what the plain call adds.
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def tokenize_pieces(pieces: Iterable[Piece], tokenizer, separator_id: int, batch_chars: int = BATCH_CHARS,
                    on_batch=None, expected_tokens: int = 1 << 20) -> tuple[np.ndarray, int, int]:
    """``(tokens, n_documents, n_bytes)``: ``pieces`` tokenized in batches (``encode_batches``) and concatenated,
    a ``separator_id`` token between documents: ``doc0 SEP doc1 SEP ... docN-1`` as int32. Each batch is converted
    to int32 and copied into one growing array, so the peak memory is the int32 result plus one batch of Python
    lists. ``expected_tokens``: the array's first size (an overestimate costs address space only: the pages never
    written are never resident, and the array is shrunk to the tokens at the end). ``on_batch(pieces, n_tokens,
    n_documents)`` is called after each batch (a progress bar)."""
    vocab_limit = np.iinfo(np.int32).max
    # One array grown and shrunk in place (``resize``: realloc, for a large block mremap, which moves no pages)
    # rather than per-batch arrays joined at the end: a join holds the tokens twice, and the freed batches stay in
    # the process's heap, which a later build step then cannot reuse for its own large arrays.
    tokens = np.empty(max(int(expected_tokens), 1), dtype=np.int32)
    sep_list = [int(separator_id)]
    n_docs = 0
    n_bytes = 0
    n_tokens = 0
    for batch, encoded in encode_batches(pieces, tokenizer, batch_chars):
        parts: list[list[int]] = []
        for piece, ids in zip(batch, encoded):
            if piece.starts_document:
                if n_docs:
                    parts.append(sep_list)
                n_docs += 1
            parts.append(ids)
            n_bytes += piece.n_bytes
        count = sum(map(len, parts))
        if count:
            # One array per batch, not per document (millions of short records would otherwise cost ~100 bytes of
            # array overhead each), filled straight from the id lists without an intermediate array per piece.
            joined = np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64, count=count)
            if joined.max() > vocab_limit or joined.min() < 0:
                raise ValueError("a token id does not fit in int32")
            if n_tokens + count > len(tokens):
                tokens.resize(max(2 * len(tokens), n_tokens + count), refcheck=False)
            tokens[n_tokens: n_tokens + count] = joined
            n_tokens += count
        if on_batch is not None:
            on_batch(batch, n_tokens, n_docs)
    tokens.resize(n_tokens, refcheck=False)
    return tokens, n_docs, n_bytes


def tokenize_corpus(paths: Sequence[str | Path], tokenizer, fields: Sequence[str] | None = None,
                    glob: str | None = None, exclude: Sequence[str] = (), separator_id: int | None = None,
                    batch_chars: int = BATCH_CHARS, piece_chars: int = PIECE_CHARS,
                    progress: bool = True, exclude_overlap: str | Path | None = None,
                    overlap_n: int = 13) -> TokenizedCorpus:
    """Tokenize every document and concatenate: ``doc0 SEP doc1 SEP ... docN-1`` as int32 (``tokenize_pieces``).

    Documents are sent to the fast tokenizer's batch call in groups of about ``batch_chars`` characters (the Rust
    tokenizer parallelises across a batch). ``exclude_overlap``: drop documents that share a word ``overlap_n``-gram
    with a prompt of that evaluation file (see ``draftless.stores.decontaminate``).
    """
    from tqdm.auto import tqdm

    sep = separator_token(tokenizer) if separator_id is None else int(separator_id)
    t0 = time.perf_counter()
    total_bytes = corpus_bytes(paths, glob, exclude)
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenize", disable=not progress)

    def on_batch(batch: list[Piece], n_tokens: int, n_docs: int) -> None:
        bar.update(sum(p.n_bytes for p in batch))
        bar.set_postfix(tokens=n_tokens, docs=n_docs, refresh=False)

    pieces = iter_pieces(paths, fields, glob, exclude, piece_chars)
    report = None
    if exclude_overlap:
        report = new_report(exclude_overlap, overlap_n)
        pieces = filter_pieces(pieces, exclude_overlap, overlap_n, report=report)
    # a token covers at least a byte of text, and a separator stands between files: about one slot per byte
    # bounds the tokens of most corpora (the array grows if not)
    tokens, n_docs, n_bytes = tokenize_pieces(pieces, tokenizer, sep, batch_chars, on_batch,
                                              expected_tokens=total_bytes + 1024)
    bar.close()
    return TokenizedCorpus(tokens, n_docs, n_bytes, sep, time.perf_counter() - t0, report)
