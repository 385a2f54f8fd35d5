"""Suffix arrays over int32 token corpora (any vocabulary): construction, lookup, the ``"rest"`` datastore.

Construction is prefix doubling on numpy sorts (Manber-Myers with the "sort only unresolved groups" refinement of
Larsson-Sadakane):

1. the first ``c`` tokens of every suffix are packed into one int64 key (``c = 63 // bits(vocab + 1)``: 3 tokens for
   a 50k-260k vocabulary, 10 for a 48-token test vocabulary; the end of the text packs as 0, below every token) and
   the positions are argsorted by it. A suffix's *rank* is the slot of the first member of its group of equal keys,
   so ranks order suffixes by their first ``h = c`` tokens;
2. while some groups hold more than one suffix, only the members of those groups are re-sorted, by the packed pair
   ``(rank[i], rank[i + h])`` (``rank[i + h] = -1`` past the end) which orders them by their first ``2h`` tokens;
   ranks of the re-sorted slots are updated all at once and ``h`` doubles.

Natural text resolves most suffixes in the first rounds, so later rounds sort small subsets; the rounds needed grow
with the longest repeated substring (log2 of it). Measured on one core: 1.2-1.4M tokens/s (9.1M tokens of Python in
7.4 s, 36.6M tokens in 26.5 s), peak memory about 35-45 bytes per token (int64 keys and argsort permutations of the
unresolved suffixes, int32 suffix array and ranks).

Lookup (``find``): two binary searches for the slots whose suffixes start with a query (O(m log n)); continuation
counting walks the tokens after each occurrence into a trie (``kernels.suffix_array_kernels``).

Store kind ``"rest"``: ``tokens.npy`` int32[n] + ``sa.npy`` (int32 below 2**31 tokens, else int64), memory-mapped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..stores.datastore import DatastoreError, open_store, write_store
from .kernels import suffix_array_kernels as K
from .tokens import as_token_array

KIND = "rest"
FORMAT_ARRAYS = ("tokens", "sa")


def _initial_keys(tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """Pack the first ``c`` tokens of every suffix (as ``token + 1``; 0 past the end) into int64 keys."""
    n = len(tokens)
    top = int(tokens.max()) + 2 if n else 2
    bits = max(1, int(top - 1).bit_length())
    c = max(1, 63 // bits)
    keys = np.zeros(n, dtype=np.int64)
    shifted = tokens.astype(np.int64) + 1
    for j in range(c):
        keys <<= bits
        if j < n:
            keys[: n - j] |= shifted[j:]
    return keys, c


def _runs(sorted_vals: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """For a sorted array: ``heads`` (the index where each element's run of equal values starts) and ``single``
    (the element is alone in its run)."""
    m = len(sorted_vals)
    starts = np.empty(m, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_vals[1:], sorted_vals[:-1], out=starts[1:])
    heads = np.arange(m, dtype=dtype)
    heads[~starts] = 0
    np.maximum.accumulate(heads, out=heads)
    single = starts  # a run of one starts here and the next element starts another run
    single[:-1] &= starts[1:].copy()
    return heads, single


def build_suffix_array(tokens, progress: bool = False) -> np.ndarray:
    """The suffix array of ``tokens`` (int32 when ``n < 2**31``, else int64). See the module docstring."""
    from tqdm.auto import tqdm

    tokens = as_token_array(tokens)
    n = len(tokens)
    index_dtype = np.int32 if n < 2**31 - 1 else np.int64
    if n == 0:
        return np.zeros(0, dtype=index_dtype)
    keys, h = _initial_keys(tokens)
    sa = np.argsort(keys).astype(index_dtype)  # equal keys in any order: they share a rank
    keys = keys[sa]
    heads, single = _runs(keys, index_dtype)
    del keys
    rank = np.empty(n, dtype=index_dtype)
    rank[sa] = heads
    del heads
    unresolved = np.flatnonzero(~single).astype(index_dtype)  # slots of suffixes sharing their group
    del single
    bar = tqdm(total=n, desc="suffix array", unit="tok", unit_scale=True, disable=not progress)
    bar.update(n - len(unresolved))
    while len(unresolved):
        pos = sa[unresolved]
        # sort key (rank[i], rank[i + h]) packed into one int64: rank < n, rank[i + h] + 1 <= n (0 past the end)
        packed = rank[pos].astype(np.int64) * (n + 1)
        nxt = pos.astype(np.int64) + h
        inside = nxt < n
        packed[inside] += rank[nxt[inside]].astype(np.int64) + 1
        del nxt, inside
        order = np.argsort(packed)
        packed = packed[order]
        pos = pos[order]
        del order
        # Old groups occupy contiguous slots and their ranks differ, so sorting the unresolved subset keeps every
        # suffix inside its old group's slots, and a new group never spans two old groups: its rank is the slot of
        # its first member. All ranks change at once (they were all read above).
        sa[unresolved] = pos
        heads, single = _runs(packed, index_dtype)
        del packed
        rank[pos] = unresolved[heads]
        del heads, pos
        bar.update(int(single.sum()))
        unresolved = unresolved[~single]
        h *= 2
    bar.close()
    return sa


def brute_force_suffix_array(tokens) -> np.ndarray:
    """Reference oracle: sort the suffixes as Python lists (tests only; quadratic)."""
    t = [int(x) for x in np.asarray(tokens).tolist()]
    return np.array(sorted(range(len(t)), key=lambda i: t[i:]), dtype=np.int64)


class SuffixArray:
    """A corpus with its suffix array: ``find`` occurrence ranges, ``continuations`` after a pattern.

    Build with ``SuffixArray.build(tokens)``; ``save``/``load`` a ``"rest"`` datastore (memory-mapped).
    """

    def __init__(self, tokens: np.ndarray, sa: np.ndarray, store_meta: dict | None = None):
        self.tokens = tokens
        self.sa = sa
        self.store_meta = store_meta

    @classmethod
    def build(cls, tokens, progress: bool = False) -> SuffixArray:
        tokens = as_token_array(tokens)
        return cls(tokens, build_suffix_array(tokens, progress=progress))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def separator_id(self) -> int | None:
        sep = (self.store_meta or {}).get("separator_id")
        return None if sep is None else int(sep)

    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.sa.nbytes)

    # ------------------------------------------------------------------------------------------ queries
    def find(self, pattern) -> tuple[int, int]:
        """``(lo, hi)``: the slots of ``sa`` whose suffixes start with ``pattern`` (``hi - lo`` occurrences)."""
        q = np.ascontiguousarray(pattern, dtype=np.int64)
        if q.ndim != 1:
            raise ValueError("pattern must be 1-D")
        if len(q) == 0:
            return 0, len(self)
        lo, hi = K.sa_range(self.tokens, self.sa, q, 0, len(q))
        return int(lo), int(hi)

    def count(self, pattern) -> int:
        lo, hi = self.find(pattern)
        return hi - lo

    def positions(self, pattern, limit: int | None = None) -> np.ndarray:
        """Start positions of ``pattern`` (in suffix order); at most ``limit``, sampled evenly over the range."""
        lo, hi = self.find(pattern)
        return self.sa[self.sample_slots(lo, hi, limit)].astype(np.int64)

    @staticmethod
    def sample_slots(lo: int, hi: int, limit: int | None) -> np.ndarray:
        n = hi - lo
        if limit is None or n <= limit:
            return np.arange(lo, hi, dtype=np.int64)
        return lo + (np.arange(limit, dtype=np.int64) * n) // limit

    def longest_suffix_match(self, context, min_len: int = 2, max_len: int = 16) -> tuple[int, int, int]:
        """``(m, lo, hi)`` for the longest ``context[-m:]`` (``min_len <= m <= max_len``) found; ``m = 0``: none."""
        ctx = np.ascontiguousarray(context, dtype=np.int64)
        m, lo, hi = K.longest_suffix_match(self.tokens, self.sa, ctx, int(min_len), int(max_len))
        return int(m), int(lo), int(hi)

    def continuation_counts(self, pattern, max_depth: int, limit: int | None = None,
                            stop_token: int | None = None, max_nodes: int = 4096):
        """Trie of what follows the occurrences of ``pattern``: ``(tokens, parents, counts, depths)``.

        Node 0 is the root (all sampled occurrences); ``counts[i]`` is how many occurrences continue with the path to
        node ``i``. Paths stop at ``stop_token`` (not included), at the end of the corpus and after ``max_depth``.
        """
        q = np.ascontiguousarray(pattern, dtype=np.int64)
        lo, hi = self.find(q)
        starts = self.sa[self.sample_slots(lo, hi, limit)].astype(np.int64) + len(q)
        tok, par, w, depth = K.continuation_trie(self.tokens, starts, np.ones(len(starts)), int(max_depth),
                                                 -1 if stop_token is None else int(stop_token), int(max_nodes))
        return tok, par, np.rint(w).astype(np.int64), depth

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, tokenizer_identity: Mapping | None = None,
             build_args: Mapping | None = None, extra_meta: Mapping | None = None) -> Path:
        """Write a ``"rest"`` datastore (``tokens.npy`` + ``sa.npy`` + ``meta.json``)."""
        meta = {"sa_dtype": self.sa.dtype.str}
        meta.update(extra_meta or {})
        return write_store(path, KIND, {"tokens": self.tokens, "sa": self.sa}, tokenizer_identity, build_args, meta,
                           n_tokens=len(self))

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, tokenizer_identity: Mapping | None = None,
             verify: str = "size") -> SuffixArray:
        """Open a ``"rest"`` datastore; ``DatastoreError`` when it is missing, corrupt, foreign or inconsistent."""
        store = open_store(path, expected_kind=KIND, tokenizer_identity=tokenizer_identity, verify=verify, mmap=mmap)
        missing = [name for name in FORMAT_ARRAYS if name not in store.arrays]
        if missing:
            raise DatastoreError(f"{path}: suffix-array store lacks arrays {missing}")
        tokens, sa = store.arrays["tokens"], store.arrays["sa"]
        n = int(store.meta["n_tokens"])
        if not (tokens.shape == (n,) and sa.shape == (n,) and tokens.dtype == np.int32
                and sa.dtype in (np.dtype(np.int32), np.dtype(np.int64))):
            raise DatastoreError(f"{path}: suffix-array arrays have inconsistent shapes or dtypes")
        if n and not (0 <= int(sa[0]) < n and 0 <= int(sa[-1]) < n):
            raise DatastoreError(f"{path}: suffix array holds positions outside the corpus")
        return cls(tokens, sa, store.meta)

    def __repr__(self) -> str:
        return f"SuffixArray(n_tokens={len(self):,}, sa={self.sa.dtype})"
