"""Several separator-first suffix arrays, each over whole documents of one corpus, queried as the array of the
whole corpus.

A corpus of documents joined by a separator ``doc0 SEP doc1 SEP ... docN`` can be cut at any separator into shards
``doc0 SEP ... docK`` | ``docK+1 SEP ... docN``, each with its own suffix array. In a separator-first array (the
separator sorts below every token, ``draftless.index.suffix_array``) a match never holds the separator and a
continuation stops at it, so every occurrence and every continuation lies inside one document: the occurrences of
a pattern in the whole corpus are the union of its occurrences in the shards. ``ShardedSuffixArray`` answers
``RestDrafter``'s two questions alike:

- ``match``: the longest tail of the context found in any shard (the longest found in the whole corpus), with its
  slot range in every shard;
- ``continuations``: the trie of what follows those occurrences, at most ``limit`` of them sampled at evenly spaced
  ranks. The one-array drafter samples ranks of its slot range, whose order is the order of the occurrences' keys
  (the ``max_depth`` tokens after the match, cut at the separator); here the ranks are taken in the shards' ranges
  merged by key (``kernels.suffix_array_kernels.select_ranks``), so the sampled keys, their order and the trie are
  the same as the one array's: identical draft trees from any sharding of the same documents.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .kernels import suffix_array_kernels as K
from .suffix_array import KIND, SuffixArray


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view: every shard's arrays then have one numba type (stores are mapped read-only)."""
    view = array.view()
    view.flags.writeable = False
    return view


class ShardedSuffixArray:
    """Separator-first ``SuffixArray`` shards (same separator, each over whole documents) as one index.

    ``store_meta``: the sharded store's manifest, when opened from one. ``ValueError`` when the shards cannot be
    queried together (no shards, a plain array, different separators or suffix-array dtypes).
    """

    kind = KIND

    def __init__(self, shards: Sequence[SuffixArray], store_meta: dict | None = None):
        from numba.typed import List

        shards = list(shards)
        if not shards:
            raise ValueError("a sharded suffix array needs at least one shard")
        separators = {s.separator for s in shards}
        if None in separators:
            raise ValueError("every shard must be a separator-first suffix array (built with separator=...)")
        if len(separators) != 1:
            raise ValueError(f"shards were built with different separators {sorted(separators)}")
        if len({s.sa.dtype for s in shards}) != 1:
            raise ValueError("shards hold suffix arrays of different dtypes")
        self.shards = shards
        self.separator = separators.pop()
        self.store_meta = store_meta
        self._toks = List([_readonly(np.asarray(s.tokens)) for s in shards])
        self._sas = List([_readonly(np.asarray(s.sa)) for s in shards])

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def separator_id(self) -> int:
        return self.separator

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.shards)

    def query_tail(self, context, max_len: int) -> np.ndarray:
        return self.shards[0].query_tail(context, max_len)

    def match(self, tail: np.ndarray, min_len: int, max_len: int) -> tuple[int, np.ndarray]:
        """``(m, ranges)``: the longest ``tail[-m:]`` found in any shard and its slot range ``ranges[s] = (lo, hi)``
        in every shard ``s`` (empty where it does not occur)."""
        found = [shard.match(tail, min_len, max_len) for shard in self.shards]
        m = max(f[0] for f in found)
        ranges = np.zeros((len(found), 2), dtype=np.int64)
        if m:
            for s, (ms, where) in enumerate(found):
                if ms == m:
                    ranges[s] = where
        return m, ranges

    def count(self, pattern) -> int:
        """Occurrences of ``pattern`` in all shards."""
        return sum(s.count(pattern) for s in self.shards)

    def continuations(self, m: int, ranges: np.ndarray, limit: int | None, max_depth: int, max_nodes: int):
        """As ``SuffixArray.continuations``, over the occurrences in every shard (see the module docstring)."""
        lo = np.ascontiguousarray(ranges[:, 0])
        hi = np.ascontiguousarray(ranges[:, 1])
        total = int((hi - lo).sum())
        if limit is None or total <= limit:
            targets = np.arange(total, dtype=np.int64)
        else:
            targets = (np.arange(limit, dtype=np.int64) * total) // limit
        depth, sep = int(max_depth), self.separator
        shard, starts = K.select_ranks(self._toks, self._sas, lo, hi, int(m), depth, sep, targets)
        text, offsets = K.gather_keys(self._toks, shard, starts, depth, sep)
        tok, par, w, dep = K.continuation_trie(text, offsets, np.ones(len(offsets)), depth, sep, int(max_nodes))
        return tok, par, w, dep, len(targets)

    def __repr__(self) -> str:
        return f"ShardedSuffixArray({len(self.shards)} shards, n_tokens={len(self):,}, separator {self.separator})"
