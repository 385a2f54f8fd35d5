"""Numba kernels for suffix-array lookups and continuation tries: arrays in, arrays out, no classes.

Conventions: ``tokens`` int32[n] is the corpus, ``sa`` int32/int64[n] its suffix array (suffix start positions in
lexicographic order; a suffix that is a proper prefix of another sorts first, i.e. the end of the text is smaller
than every token). Queries are int64/int32 arrays.

Used by ``draftless.index.suffix_array`` (REST) and ``draftless.index.dense_index`` (DReSD): both turn a set of corpus
positions into a trie of the tokens that follow them (``continuation_trie``).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def compare_suffix(tokens, start, query, q_lo, q_hi):
    """Compare the suffix ``tokens[start:]`` truncated to ``q_hi - q_lo`` tokens with ``query[q_lo:q_hi]``.

    Returns -1 (suffix smaller), 0 (the suffix starts with the query) or 1 (suffix larger).
    """
    n = tokens.shape[0]
    m = q_hi - q_lo
    for j in range(m):
        p = start + j
        if p >= n:
            return -1  # the text ended: a shorter string sorts first
        a = tokens[p]
        b = query[q_lo + j]
        if a < b:
            return -1
        if a > b:
            return 1
    return 0


@njit(cache=True)
def sa_range(tokens, sa, query, q_lo, q_hi):
    """``[lo, hi)``: the suffix-array slots whose suffixes start with ``query[q_lo:q_hi]`` (empty: ``lo == hi``)."""
    n = sa.shape[0]
    # lower bound: first suffix >= query
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if compare_suffix(tokens, sa[mid], query, q_lo, q_hi) < 0:
            lo = mid + 1
        else:
            hi = mid
    first = lo
    # upper bound: first suffix > query (as a prefix)
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if compare_suffix(tokens, sa[mid], query, q_lo, q_hi) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return first, lo


@njit(cache=True)
def longest_suffix_match(tokens, sa, context, min_len, max_len):
    """The longest ``m`` in ``[min_len, max_len]`` such that ``context[-m:]`` occurs in the corpus, with its range.

    Occurrence is monotone in ``m`` (a suffix of an occurrence is an occurrence), so ``m`` is found by binary search
    over lengths: O(log(max_len) * m * log n). Returns ``(m, lo, hi)``; ``m == 0`` when not even ``min_len`` occurs.
    """
    L = context.shape[0]
    if max_len > L:
        max_len = L
    if min_len < 1:
        min_len = 1
    if max_len < min_len:
        return 0, 0, 0
    best_m, best_lo, best_hi = 0, 0, 0
    a, b = min_len, max_len
    while a <= b:
        m = (a + b) >> 1
        lo, hi = sa_range(tokens, sa, context, L - m, L)
        if hi > lo:
            best_m, best_lo, best_hi = m, lo, hi
            a = m + 1
        else:
            b = m - 1
    return best_m, best_lo, best_hi


@njit(cache=True)
def continuation_trie(tokens, starts, weights, max_depth, stop_token, max_nodes):
    """Trie of the token sequences ``tokens[s : s + max_depth]`` for every ``s`` in ``starts``.

    A sequence stops early at the end of ``tokens``, at ``stop_token`` (never included; -1 for none) or when the trie
    holds ``max_nodes`` nodes. Node 0 is the (token-less) root; children are created after their parents, so
    ``parents[i] < i``. Returns ``(node_tokens int64, parents int32, weight_sums float64, depths int32)``, where
    ``weight_sums[i]`` is the summed weight of the sequences passing through node ``i`` (root: all of them).
    """
    n_tok = tokens.shape[0]
    node_tok = np.empty(max_nodes, dtype=np.int64)
    parents = np.empty(max_nodes, dtype=np.int32)
    wsum = np.zeros(max_nodes, dtype=np.float64)
    depths = np.empty(max_nodes, dtype=np.int32)
    first_child = np.full(max_nodes, -1, dtype=np.int32)
    next_sib = np.full(max_nodes, -1, dtype=np.int32)
    node_tok[0] = -1
    parents[0] = -1
    depths[0] = 0
    n = 1
    for i in range(starts.shape[0]):
        s = starts[i]
        w = weights[i]
        wsum[0] += w
        node = 0
        for d in range(max_depth):
            p = s + d
            if p < 0 or p >= n_tok:
                break
            t = tokens[p]
            if t == stop_token:
                break
            c = first_child[node]
            while c >= 0 and node_tok[c] != t:
                c = next_sib[c]
            if c < 0:
                if n >= max_nodes:
                    break
                c = n
                n += 1
                node_tok[c] = t
                parents[c] = node
                depths[c] = depths[node] + 1
                next_sib[c] = first_child[node]
                first_child[node] = c
            wsum[c] += w
            node = c
    return node_tok[:n].copy(), parents[:n].copy(), wsum[:n].copy(), depths[:n].copy()


@njit(cache=True)
def gather_next(tokens, positions, ids, offset):
    """``tokens[positions[ids] + offset]`` with -1 where that falls outside ``tokens`` (or ``ids < 0``)."""
    out = np.full(ids.shape[0], -1, dtype=np.int64)
    n = tokens.shape[0]
    for j in range(ids.shape[0]):
        i = ids[j]
        if i < 0 or i >= positions.shape[0]:
            continue
        p = positions[i] + offset
        if 0 <= p < n:
            out[j] = tokens[p]
    return out
