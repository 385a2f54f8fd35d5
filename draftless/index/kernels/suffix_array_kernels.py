"""Numba kernels for suffix-array lookups and continuation tries: arrays in, arrays out, no classes.

Conventions: ``tokens`` int32[n] is the corpus, ``sa`` int32/int64[n] its suffix array (suffix start positions in
lexicographic order; a suffix that is a proper prefix of another sorts first, i.e. the end of the text is smaller
than every token). Queries are int64/int32 arrays. ``sep``: the document separator of an array sorted
*separator-first* (the separator below every other token, see ``draftless.index.suffix_array``): lookups treat it
as the end of the text, so a match never spans two documents; -1 for a plain array (no token is -1).

Used by ``draftless.index.suffix_array`` (REST) and ``draftless.index.dense_index`` (DReSD): both turn a set of corpus
positions into a trie of the tokens that follow them (``continuation_trie``).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def compare_suffix(tokens, start, query, q_lo, q_hi, sep):
    """Compare the suffix ``tokens[start:]`` truncated to ``q_hi - q_lo`` tokens with ``query[q_lo:q_hi]`` (which
    holds no ``sep``): the text ends at its end or at ``sep``.

    Returns -1 (suffix smaller), 0 (the suffix starts with the query) or 1 (suffix larger).
    """
    n = tokens.shape[0]
    m = q_hi - q_lo
    for j in range(m):
        p = start + j
        if p >= n:
            return -1  # the text ended: a shorter string sorts first
        a = tokens[p]
        if a == sep:
            return -1  # a separator-first array: the document ended
        b = query[q_lo + j]
        if a < b:
            return -1
        if a > b:
            return 1
    return 0


@njit(cache=True)
def sa_range(tokens, sa, query, q_lo, q_hi, sep):
    """``[lo, hi)``: the suffix-array slots whose suffixes start with ``query[q_lo:q_hi]`` (empty: ``lo == hi``)."""
    n = sa.shape[0]
    # lower bound: first suffix >= query
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if compare_suffix(tokens, sa[mid], query, q_lo, q_hi, sep) < 0:
            lo = mid + 1
        else:
            hi = mid
    first = lo
    # upper bound: first suffix > query (as a prefix)
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if compare_suffix(tokens, sa[mid], query, q_lo, q_hi, sep) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return first, lo


@njit(cache=True)
def longest_suffix_match(tokens, sa, context, min_len, max_len, sep):
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
        lo, hi = sa_range(tokens, sa, context, L - m, L, sep)
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


@njit(cache=True)
def pack_big_endian(tokens, symbol_of, width, out):
    """Write ``symbol_of[tokens[i]]`` as ``width`` big-endian bytes at ``out[i * width:]``: byte strings that sort
    like the token sequences (a byte-level suffix sort then orders the aligned suffixes as token suffixes)."""
    for i in range(tokens.shape[0]):
        s = symbol_of[tokens[i]]
        base = i * width
        for j in range(width - 1, -1, -1):
            out[base + j] = s & 0xFF
            s >>= 8


@njit(cache=True)
def keep_aligned(byte_sa, width, out):
    """The suffix array of the tokens from the suffix array of their ``width``-byte packing: the positions that
    start a token (multiples of ``width``), in their order, divided by ``width``. Returns how many were written."""
    j = 0
    for i in range(byte_sa.shape[0]):
        p = byte_sa[i]
        if p % width == 0:
            out[j] = p // width
            j += 1
    return j


# ---------------------------------------------------------------------------------------------- several shards
# A sharded corpus is a list of separator-first suffix arrays (``toks[s]``, ``sas[s]``: numba typed lists). The
# occurrences of a pattern of length ``offset`` are one slot range per shard; a drafter needs them in the order of the
# suffix array of the whole corpus, and only as far as their *keys* go: the ``depth`` tokens after the pattern, cut
# at the separator or the end of the text (a cut key is smaller than any longer one). Occurrences with equal keys
# give the same continuation, so any order of equal keys is as good as another.


@njit(cache=True)
def key_compare(ta, pa, tb, pb, depth, sep):
    """Compare the keys ``ta[pa:pa + depth]`` and ``tb[pb:pb + depth]``, each cut at ``sep`` or its text's end:
    -1, 0 or 1."""
    na = ta.shape[0]
    nb = tb.shape[0]
    for d in range(depth):
        a = -1
        if pa + d < na:
            a = ta[pa + d]
            if a == sep:
                a = -1
        b = -1
        if pb + d < nb:
            b = tb[pb + d]
            if b == sep:
                b = -1
        if a != b:
            return -1 if a < b else 1
        if a == -1:
            return 0
    return 0


@njit(cache=True)
def key_bound(tok, sa, a, b, offset, ptok, ppos, depth, sep, strict):
    """The first slot ``j`` in ``[a, b)`` whose key (at ``sa[j] + offset``) is >= the key at ``ptok[ppos:]``
    (``strict``: >), the slots' keys being sorted."""
    while a < b:
        mid = (a + b) >> 1
        c = key_compare(tok, sa[mid] + offset, ptok, ppos, depth, sep)
        if c < 0 or (strict and c == 0):
            a = mid + 1
        else:
            b = mid
    return a


@njit(cache=True)
def select_ranks(toks, sas, lo, hi, offset, depth, sep, targets):
    """The occurrences at merged ranks ``targets`` (strictly increasing, below the total count) of the slot ranges
    ``[lo[s], hi[s])`` of every shard ``s``, merged by key. Returns ``(shard, start)`` int64 arrays, ``start`` the
    position after the pattern (``sas[s][slot] + offset``), in the order of ``targets``.

    Multi-sequence selection: a frame (one window per shard, the targets inside it) is split around the key of the
    middle slot of its largest window (the windows' slots below, equal to and above it, found by binary search);
    targets among the equal keys take the pivot, the rest go to the two sub-frames. A frame about as large as its
    target count is merged directly."""
    S = len(toks)
    k = targets.shape[0]
    out_shard = np.empty(k, dtype=np.int64)
    out_start = np.empty(k, dtype=np.int64)
    cap = 64
    fa = np.empty((cap, S), dtype=np.int64)
    fb = np.empty((cap, S), dtype=np.int64)
    meta = np.empty((cap, 3), dtype=np.int64)  # first target, end target, rank of the frame's first element
    for s in range(S):
        fa[0, s] = lo[s]
        fb[0, s] = hi[s]
    meta[0, 0] = 0
    meta[0, 1] = k
    meta[0, 2] = 0
    top = 1
    a = np.empty(S, dtype=np.int64)
    b = np.empty(S, dtype=np.int64)
    low = np.empty(S, dtype=np.int64)
    up = np.empty(S, dtype=np.int64)
    while top > 0:
        top -= 1
        t0 = meta[top, 0]
        t1 = meta[top, 1]
        base = meta[top, 2]
        total = 0
        widest = 0
        for s in range(S):
            a[s] = fa[top, s]
            b[s] = fb[top, s]
            total += b[s] - a[s]
            if b[s] - a[s] > b[widest] - a[widest]:
                widest = s
        if total <= 2 * (t1 - t0) + 32:  # merge walk
            rank = base
            ti = t0
            while ti < t1:
                best = -1
                for s in range(S):
                    if a[s] < b[s]:
                        if best < 0 or key_compare(toks[s], sas[s][a[s]] + offset, toks[best],
                                                   sas[best][a[best]] + offset, depth, sep) < 0:
                            best = s
                if rank == targets[ti]:
                    out_shard[ti] = best
                    out_start[ti] = sas[best][a[best]] + offset
                    ti += 1
                a[best] += 1
                rank += 1
            continue
        ptok = toks[widest]
        ppos = sas[widest][(a[widest] + b[widest]) >> 1] + offset
        less = 0
        equal = 0
        for s in range(S):
            low[s] = key_bound(toks[s], sas[s], a[s], b[s], offset, ptok, ppos, depth, sep, False)
            up[s] = key_bound(toks[s], sas[s], low[s], b[s], offset, ptok, ppos, depth, sep, True)
            less += low[s] - a[s]
            equal += up[s] - low[s]
        i1 = t0
        while i1 < t1 and targets[i1] < base + less:
            i1 += 1
        i2 = i1
        while i2 < t1 and targets[i2] < base + less + equal:
            out_shard[i2] = widest
            out_start[i2] = ppos
            i2 += 1
        if top + 2 > cap:
            cap *= 2
            fa2 = np.empty((cap, S), dtype=np.int64)
            fb2 = np.empty((cap, S), dtype=np.int64)
            meta2 = np.empty((cap, 3), dtype=np.int64)
            fa2[:top] = fa[:top]
            fb2[:top] = fb[:top]
            meta2[:top] = meta[:top]
            fa, fb, meta = fa2, fb2, meta2
        if i2 < t1:  # above the pivot's keys
            for s in range(S):
                fa[top, s] = up[s]
                fb[top, s] = b[s]
            meta[top, 0] = i2
            meta[top, 1] = t1
            meta[top, 2] = base + less + equal
            top += 1
        if t0 < i1:  # below
            for s in range(S):
                fa[top, s] = a[s]
                fb[top, s] = low[s]
            meta[top, 0] = t0
            meta[top, 1] = i1
            meta[top, 2] = base
            top += 1
    return out_shard, out_start


@njit(cache=True)
def gather_keys(toks, shard, starts, depth, sep):
    """The keys of the occurrences ``(shard[i], starts[i])`` copied one after another, each followed by ``sep``:
    ``(text, offsets)`` such that ``continuation_trie(text, offsets, ..., stop_token=sep)`` counts them."""
    k = shard.shape[0]
    text = np.empty(k * (depth + 1), dtype=np.int32)
    offsets = np.empty(k, dtype=np.int64)
    n = 0
    for i in range(k):
        tok = toks[shard[i]]
        offsets[i] = n
        p = starts[i]
        for d in range(depth):
            if p + d >= tok.shape[0] or tok[p + d] == sep:
                break
            text[n] = tok[p + d]
            n += 1
        text[n] = sep
        n += 1
    return text[:n], offsets
