"""Numba kernels for suffix automata over int32 token ids: arrays in, arrays out, no classes.

Two layouts share the state table's first four columns (``LEN, LINK, POS, CNT``):

*Growable* (online construction, the dynamic automaton):
  - ``st``   int32[cap_states, 6]: per state ``LEN`` (longest string), ``LINK`` (suffix link, -1 at the root),
    ``POS`` (first end position: index in the token array of the last token of the first occurrence), ``CNT``
    (occurrences; see below), ``OFF`` (offset of the state's transition table in ``pool``) and ``META``
    (``deg | (lg + 1) << 24``: number of transitions and log2 of the table size, ``lg = -1`` for "no table").
    One row per state keeps everything a transition step reads in one cache line.
  - ``pool`` int32[cap_slots, 2]: every state owns a small open-addressing hash table of ``2**lg`` slots
    ``(token, target)`` (token ``-1`` = empty) at ``pool[OFF : OFF + 2**lg]``. Tables of up to 4 slots fill
    completely; larger ones stay at most 3/4 full. A table that must grow moves to a table twice its size and
    its old slots go to a free list per size, so the pool holds little garbage.
    Why per-state tables instead of one global (state, token) table: cloning a state copies its table with one
    memcpy (a global table cannot enumerate one state's transitions, so it would need child lists besides), and
    most states have one or two transitions, so tables are nearly full: measured 1.18 slots = 9.4 bytes per
    transition on Python code, where a global table (12-byte slots, at most 3/4 full) plus child lists would take
    ~25-30. The root's table simply grows to the vocabulary (2**19 slots for 262k tokens).
    Offsets and ids are int32: at most 2**31 - 1 pool slots (about 2**29 tokens of text).
  - ``hdr`` int64[HDR_SIZE]: counters (see ``H_*``) and free-list heads.

*Frozen* (a saved datastore, read-only, memory-mappable), CSR transitions:
  - ``st`` int32[n_states, 4]; ``edge_off`` int32[n_states + 1]; ``edge_tok`` / ``edge_to`` int32[n_edges]
    (each state's transitions sorted by token, so lookup is a binary search); ``root_next`` int32[vocab]
    (the root's transitions as a dense row: the root is the one state with a huge out-degree).

Occurrence counts: ``sam_extend(..., online_counts=False)`` marks states created for a new position with 1 and
clones with 0; ``sam_count_occurrences`` then sums along suffix links in order of decreasing length. With
``online_counts=True`` every extension adds 1 along the new state's suffix-link path instead (cost = depth of that
path, small on natural text), so a dynamic automaton stays exact after every token.
"""
from __future__ import annotations

import heapq

import numpy as np
from numba import njit

LEN, LINK, POS, CNT, OFF, META = 0, 1, 2, 3, 4, 5
N_COLS = 6
N_FROZEN_COLS = 4
EMPTY = -1

H_STATES, H_LAST, H_POOL, H_EDGES, H_TOKENS, H_FREE_SLOTS = 0, 1, 2, 3, 4, 5
H_FREELIST = 8  # hdr[H_FREELIST + lg] = offset of the first free table of 2**lg slots, -1 if none
HDR_SIZE = H_FREELIST + 32

DEG_MASK = (1 << 24) - 1
HASH_MUL = 2654435761  # Knuth's multiplicative hash; the top lg bits of the 32-bit product pick the home slot
SMALL_LG = 2  # tables of at most 2**SMALL_LG slots may be completely full


# ---------------------------------------------------------------------------------------------- growable layout
@njit(cache=True)
def sam_new(cap_states, cap_slots):
    """An automaton holding only the root. Returns ``(st, pool, hdr)`` (see the module docstring)."""
    st = np.empty((max(cap_states, 2), N_COLS), dtype=np.int32)
    pool = np.empty((max(cap_slots, 1), 2), dtype=np.int32)
    hdr = np.zeros(HDR_SIZE, dtype=np.int64)
    sam_init(st, hdr)
    return st, pool, hdr


@njit(cache=True)
def sam_init(st, hdr):
    """Reset ``st``/``hdr`` (caller-allocated, e.g. lazily-touched ``np.empty``) to the root-only automaton."""
    hdr[:] = 0
    hdr[H_FREELIST:] = -1
    st[0, LEN] = 0
    st[0, LINK] = -1
    st[0, POS] = -1
    st[0, CNT] = 0
    st[0, OFF] = 0
    st[0, META] = 0
    hdr[H_STATES] = 1
    hdr[H_LAST] = 0


@njit(cache=True, inline="always")
def _home(c, lg):
    if lg == 0:
        return 0
    return ((np.int64(c) * HASH_MUL) & 0xFFFFFFFF) >> (32 - lg)


@njit(cache=True, inline="always")
def _max_fill(lg):
    cap = 1 << lg
    return cap if lg <= SMALL_LG else cap - (cap >> 2)


@njit(cache=True)
def _probe(st, pool, s, c):
    """Like ``_find`` but, when ``c`` is absent, returns ``-2 - slot`` of the empty slot where it would go
    (-1 when ``s`` has no table or a full one): inserting then needs no second probe."""
    lg = (st[s, META] >> 24) - 1
    if lg < 0:
        return -1
    mask = (1 << lg) - 1
    off = st[s, OFF]
    j = _home(c, lg)
    for _ in range(mask + 1):
        t = pool[off + j, 0]
        if t == c:
            return off + j
        if t == EMPTY:
            return -2 - (off + j)
        j = (j + 1) & mask
    return -1


@njit(cache=True)
def _find(st, pool, s, c):
    """Slot index in ``pool`` holding token ``c`` of state ``s``, or -1."""
    slot = _probe(st, pool, s, c)
    return slot if slot >= 0 else -1


@njit(cache=True)
def dyn_next(st, pool, s, c):
    """Target of the transition ``(s, c)`` in the growable layout, -1 when absent."""
    j = _find(st, pool, s, c)
    return pool[j, 1] if j >= 0 else -1


@njit(cache=True, inline="always")
def _put(pool, off, lg, c, target):
    mask = (1 << lg) - 1
    j = _home(c, lg)
    while pool[off + j, 0] != EMPTY:
        j = (j + 1) & mask
    pool[off + j, 0] = c
    pool[off + j, 1] = target


@njit(cache=True)
def _alloc(pool, hdr, lg):
    """Take a table of ``2**lg`` empty slots (the caller made sure the pool has room at its end)."""
    size = 1 << lg
    head = hdr[H_FREELIST + lg]
    if head >= 0:
        off = head
        hdr[H_FREELIST + lg] = pool[off, 1]
        hdr[H_FREE_SLOTS] -= size
    else:
        off = hdr[H_POOL]
        if off + size > 2147483647:
            raise ValueError("suffix automaton too large: pool offsets exceed int32")
        hdr[H_POOL] += size
    pool[off:off + size, 0] = EMPTY
    return off


@njit(cache=True)
def _release(pool, hdr, off, lg):
    pool[off, 1] = hdr[H_FREELIST + lg]
    hdr[H_FREELIST + lg] = off
    hdr[H_FREE_SLOTS] += 1 << lg


@njit(cache=True, inline="always")
def _insert_need(st, s):
    """Pool slots that inserting one more transition into ``s`` may allocate (0 when its table has room)."""
    meta = st[s, META]
    lg = (meta >> 24) - 1
    if lg < 0:
        return 1
    if (meta & DEG_MASK) + 1 > _max_fill(lg):
        return 2 << lg
    return 0


@njit(cache=True)
def _insert(st, pool, hdr, s, c, target):
    """Add the transition ``(s, c) -> target`` (absent before), growing ``s``'s table when needed."""
    meta = st[s, META]
    lg = (meta >> 24) - 1
    deg = meta & DEG_MASK
    if lg < 0 or deg + 1 > _max_fill(lg):
        new_lg = lg + 1
        new_off = _alloc(pool, hdr, new_lg)
        if lg >= 0:
            old_off = st[s, OFF]
            for j in range(old_off, old_off + (1 << lg)):
                _put(pool, new_off, new_lg, pool[j, 0], pool[j, 1])
            _release(pool, hdr, old_off, lg)
        st[s, OFF] = new_off
        lg = new_lg
    _put(pool, st[s, OFF], lg, c, target)
    st[s, META] = (deg + 1) | ((lg + 1) << 24)
    hdr[H_EDGES] += 1


@njit(cache=True)
def _grow_rows(st, n_used, need):
    new = np.empty((max(need, 2 * st.shape[0]), st.shape[1]), dtype=st.dtype)
    new[:n_used] = st[:n_used]
    return new


@njit(cache=True)
def _grow_pool(pool, n_used, need):
    # x2 while small, x1.5 when large: a copy holds old and new at once
    cap = pool.shape[0]
    new = np.empty((max(need, 2 * cap if cap < (1 << 24) else cap + (cap >> 1)), 2), dtype=pool.dtype)
    new[:n_used] = pool[:n_used]
    return new


@njit(cache=True)
def sam_extend(tokens, start, stop, st, pool, hdr, online_counts):
    """Append ``tokens[start:stop]`` (int32, >= 0) to the automaton, one online extension per token.

    The state of a new token's position ``i`` records ``POS = hdr[H_TOKENS]`` (the caller keeps ``tokens`` as
    the whole text so positions index it). ``st`` and ``pool`` grow by copying only when full; callers that know
    the final size pre-allocate them (``np.empty`` pages cost nothing until touched) so this never happens.
    Returns ``(st, pool)``, the same arrays unless they had to grow. Amortized O(1) transitions per token.
    """
    for i in range(start, stop):
        c = tokens[i]
        if hdr[H_STATES] + 2 > st.shape[0]:
            st = _grow_rows(st, hdr[H_STATES], hdr[H_STATES] + 2)
        last = hdr[H_LAST]
        cur = hdr[H_STATES]
        hdr[H_STATES] += 1
        st[cur, LEN] = st[last, LEN] + 1
        st[cur, LINK] = -1
        st[cur, POS] = hdr[H_TOKENS]
        st[cur, CNT] = 1
        st[cur, OFF] = 0
        st[cur, META] = 0
        # Every suffix of the old text without a c-transition gets one to the new state.
        p = last
        q = -1
        while p != -1:
            j = _probe(st, pool, p, c)
            if j >= 0:
                q = pool[j, 1]
                break
            meta = st[p, META]
            if j <= -2 and (meta & DEG_MASK) + 1 <= _max_fill((meta >> 24) - 1):
                # the common case: room in p's table, write into the empty slot the probe ended on
                pool[-2 - j, 0] = c
                pool[-2 - j, 1] = cur
                st[p, META] = meta + 1
                hdr[H_EDGES] += 1
            else:
                need = _insert_need(st, p)
                if hdr[H_POOL] + need > pool.shape[0]:
                    pool = _grow_pool(pool, hdr[H_POOL], hdr[H_POOL] + need)
                _insert(st, pool, hdr, p, c, cur)
            p = st[p, LINK]
        if p == -1:
            st[cur, LINK] = 0
        elif st[p, LEN] + 1 == st[q, LEN]:
            st[cur, LINK] = q
        else:
            # q also holds strings longer than len(p)+1 that do not end here: split off the short ones.
            clone = hdr[H_STATES]
            hdr[H_STATES] += 1
            st[clone, LEN] = st[p, LEN] + 1
            st[clone, LINK] = st[q, LINK]
            st[clone, POS] = st[q, POS]
            st[clone, CNT] = st[q, CNT] if online_counts else 0
            meta = st[q, META]
            lg = (meta >> 24) - 1
            st[clone, OFF] = 0
            if lg >= 0:
                size = 1 << lg
                if hdr[H_POOL] + size > pool.shape[0]:
                    pool = _grow_pool(pool, hdr[H_POOL], hdr[H_POOL] + size)
                off = _alloc(pool, hdr, lg)
                q_off = st[q, OFF]
                pool[off:off + size] = pool[q_off:q_off + size]  # same size and hash -> same layout
                st[clone, OFF] = off
            st[clone, META] = meta
            hdr[H_EDGES] += meta & DEG_MASK
            while p != -1:
                j = _find(st, pool, p, c)
                if j < 0 or pool[j, 1] != q:
                    break
                pool[j, 1] = clone
                p = st[p, LINK]
            st[q, LINK] = clone
            st[cur, LINK] = clone
        hdr[H_LAST] = cur
        hdr[H_TOKENS] += 1
        if online_counts:
            v = st[cur, LINK]
            while v >= 0:
                st[v, CNT] += 1
                v = st[v, LINK]
    return st, pool


@njit(cache=True)
def sam_count_occurrences(st, n_states):
    """Turn the 0/1 marks left by ``sam_extend(online_counts=False)`` into occurrence counts, in place.

    ``CNT[s]`` becomes the number of end positions of ``s`` (the root's becomes the number of tokens): children
    in the suffix-link tree are longer, so summing in order of decreasing ``LEN`` (a counting sort) finishes
    every state before its link. Scratch: int32[n_states] + int32[max LEN + 2].
    """
    max_len = 0
    for s in range(n_states):
        if st[s, LEN] > max_len:
            max_len = st[s, LEN]
    start = np.zeros(max_len + 2, dtype=np.int32)
    for s in range(n_states):
        start[st[s, LEN] + 1] += 1
    for k in range(1, max_len + 2):
        start[k] += start[k - 1]
    order = np.empty(n_states, dtype=np.int32)
    for s in range(n_states):
        k = st[s, LEN]
        order[start[k]] = s
        start[k] += 1
    for k in range(n_states - 1, 0, -1):
        s = order[k]
        st[st[s, LINK], CNT] += st[s, CNT]


# ---------------------------------------------------------------------------------------------- frozen layout
@njit(cache=True)
def sam_freeze_edges(st, pool, n_states, edge_off, edge_tok, edge_to, root_next):
    """Copy the hash tables into CSR arrays (each state's transitions sorted by token) and the dense root row.

    ``edge_off`` int32[n_states + 1], ``edge_tok``/``edge_to`` int32[n_edges], ``root_next`` int32[vocab]
    (every root token must be < vocab) are filled in place.
    """
    e = 0
    for s in range(n_states):
        edge_off[s] = e
        meta = st[s, META]
        lg = (meta >> 24) - 1
        deg = meta & DEG_MASK
        if lg < 0:
            continue
        off = st[s, OFF]
        k = e
        for j in range(off, off + (1 << lg)):
            if pool[j, 0] != EMPTY:
                edge_tok[k] = pool[j, 0]
                edge_to[k] = pool[j, 1]
                k += 1
        if deg <= 16:  # insertion sort: nearly every state has one or two transitions
            for a in range(e + 1, e + deg):
                t, v = edge_tok[a], edge_to[a]
                b = a - 1
                while b >= e and edge_tok[b] > t:
                    edge_tok[b + 1] = edge_tok[b]
                    edge_to[b + 1] = edge_to[b]
                    b -= 1
                edge_tok[b + 1] = t
                edge_to[b + 1] = v
        else:
            order = np.argsort(edge_tok[e:e + deg], kind="mergesort")
            toks = edge_tok[e:e + deg][order]
            tos = edge_to[e:e + deg][order]
            edge_tok[e:e + deg] = toks
            edge_to[e:e + deg] = tos
        e += deg
    edge_off[n_states] = e
    root_next[:] = -1
    for k in range(edge_off[0], edge_off[1]):
        root_next[edge_tok[k]] = edge_to[k]


@njit(cache=True)
def sam_compact_rows(st, n_states):
    """Drop the ``OFF``/``META`` columns in place: row ``s``'s first four fields move to flat ``4s .. 4s+3``.

    Returns the int32[n_states, 4] frozen state table as a view of ``st``'s memory (no copy: writes go to lower
    addresses than any row still to be read).
    """
    flat = st.reshape(-1)
    for s in range(n_states):
        for k in range(N_FROZEN_COLS):
            flat[N_FROZEN_COLS * s + k] = flat[N_COLS * s + k]
    return flat[:N_FROZEN_COLS * n_states].reshape((n_states, N_FROZEN_COLS))


@njit(cache=True)
def csr_next(edge_off, edge_tok, edge_to, root_next, s, c):
    """Target of the transition ``(s, c)`` in the frozen layout, -1 when absent."""
    if s == 0:
        return root_next[c] if c < root_next.shape[0] else -1
    lo = edge_off[s]
    hi = edge_off[s + 1]
    while hi - lo > 8:
        mid = (lo + hi) >> 1
        if edge_tok[mid] <= c:
            lo = mid
        else:
            hi = mid
    for k in range(lo, hi):
        if edge_tok[k] == c:
            return edge_to[k]
    return -1


# ---------------------------------------------------------------------------------------------- queries (both)
# ``frozen`` picks the layout; the other layout's arrays may be empty placeholders.
@njit(cache=True, inline="always")
def _next(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, s, c):
    if frozen:
        return csr_next(edge_off, edge_tok, edge_to, root_next, s, c)
    return dyn_next(st, pool, s, c)


@njit(cache=True)
def sam_step(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, state, length, c):
    """One token of longest-suffix matching: ``(state, length)`` describe the longest suffix of the text read so far
    that occurs in the automaton's text; returns the pair after also reading ``c`` (suffix links on failure).
    """
    while True:
        t = _next(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, state, c)
        if t >= 0:
            return t, length + 1
        if state == 0:
            return 0, 0
        state = st[state, LINK]
        length = st[state, LEN]


@njit(cache=True)
def sam_match(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, tokens, state, length, lengths):
    """``sam_step`` over every token of ``tokens``; writes each step's match length into ``lengths`` (int32[len]
    or empty to skip) and returns the final ``(state, length)``. Amortized O(1) per token.
    """
    record = lengths.shape[0] == tokens.shape[0]
    for i in range(tokens.shape[0]):
        state, length = sam_step(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, state, length, tokens[i])
        if record:
            lengths[i] = length
    return state, length


@njit(cache=True)
def sam_find(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, tokens):
    """State reached by reading ``tokens`` from the root (the pattern's equivalence class), or -1."""
    s = 0
    for i in range(tokens.shape[0]):
        s = _next(frozen, st, pool, edge_off, edge_tok, edge_to, root_next, s, tokens[i])
        if s < 0:
            return -1
    return s


@njit(cache=True)
def sam_children(frozen, st, pool, edge_off, edge_tok, edge_to, s):
    """Transitions of ``s``: returns ``(tokens int32[d], targets int32[d])``, tokens ascending."""
    if frozen:
        lo, hi = edge_off[s], edge_off[s + 1]
        return edge_tok[lo:hi].copy(), edge_to[lo:hi].copy()
    meta = st[s, META]
    lg = (meta >> 24) - 1
    deg = meta & DEG_MASK
    toks = np.empty(deg, dtype=np.int32)
    tos = np.empty(deg, dtype=np.int32)
    if lg >= 0:
        off = st[s, OFF]
        k = 0
        for j in range(off, off + (1 << lg)):
            if pool[j, 0] != EMPTY:
                toks[k] = pool[j, 0]
                tos[k] = pool[j, 1]
                k += 1
    order = np.argsort(toks)
    return toks[order], tos[order]


@njit(cache=True)
def sam_draft_tree(frozen, st, pool, edge_off, edge_tok, edge_to, s0, len0, budget, max_depth, top_k, smoothing,
                   min_score, skip_token):
    """Best-first tree of the likeliest continuations of a match ``(s0, len0)`` (``s0`` must not be the root).

    Expanding a node in state ``s`` with match length ``L`` proposes the ``top_k`` transitions of ``s`` with the
    most occurrences; transition ``c`` is accepted with estimated probability
    ``p(c) = CNT[next(s, c)] / (sum over all children of CNT + smoothing * 2 / L)``, an additive prior that fades
    as the match grows (a single earlier occurrence after a 2-token match is a coin flip, after 16 tokens a good
    bet). A node's score is the product of ``p`` along its path, so scores never increase with depth. Nodes are
    taken in order of score until ``budget`` nodes (root included), ``max_depth`` or ``min_score`` stops growth;
    ``skip_token`` (a corpus document separator, or -1) is never proposed but still counts in the denominator.

    Returns ``(tokens int64[n], parents int32[n], scores float32[n])``; ``tokens[0]`` (the root) is -1 for the
    caller to fill with the last context token.
    """
    budget = max(budget, 1)
    tokens = np.empty(budget, dtype=np.int64)
    parents = np.empty(budget, dtype=np.int32)
    scores = np.empty(budget, dtype=np.float32)
    node_state = np.empty(budget, dtype=np.int64)
    node_depth = np.empty(budget, dtype=np.int64)
    tokens[0] = -1
    parents[0] = -1
    scores[0] = 1.0
    node_state[0] = s0
    node_depth[0] = 0
    best_tok = np.empty(max(top_k, 1), dtype=np.int64)
    best_to = np.empty(max(top_k, 1), dtype=np.int64)
    best_cnt = np.empty(max(top_k, 1), dtype=np.int64)
    # heap items: (-score, insertion order for stable ties, parent node, token, target state)
    heap = [(0.0, np.int64(0), np.int64(0), np.int64(0), np.int64(0))]
    heap.pop()
    seq = 0
    n = 1
    u = 0
    while True:
        # ---- expand node u: top_k children of its state by count
        if node_depth[u] < max_depth:
            s = node_state[u]
            n_best = 0
            total = 0
            if frozen:
                lo = edge_off[s]
                hi = edge_off[s + 1]
            else:
                lg = (st[s, META] >> 24) - 1
                lo = st[s, OFF]
                hi = lo + (1 << lg) if lg >= 0 else lo
            for k in range(lo, hi):
                if frozen:
                    c = edge_tok[k]
                    t = edge_to[k]
                else:
                    c = pool[k, 0]
                    t = pool[k, 1]
                    if c == EMPTY:
                        continue
                cnt = st[t, CNT]
                total += cnt
                if c == skip_token:
                    continue
                # ties go to the smaller token, so both layouts (hash order vs sorted) give the same tree
                if n_best < top_k or cnt > best_cnt[n_best - 1] or (cnt == best_cnt[n_best - 1]
                                                                    and c < best_tok[n_best - 1]):
                    j = n_best if n_best < top_k else top_k - 1
                    while j > 0 and (best_cnt[j - 1] < cnt or (best_cnt[j - 1] == cnt and best_tok[j - 1] > c)):
                        best_cnt[j] = best_cnt[j - 1]
                        best_tok[j] = best_tok[j - 1]
                        best_to[j] = best_to[j - 1]
                        j -= 1
                    best_cnt[j] = cnt
                    best_tok[j] = c
                    best_to[j] = t
                    if n_best < top_k:
                        n_best += 1
            match_len = len0 + node_depth[u]
            denom = total + smoothing * 2.0 / max(match_len, 1)
            for j in range(n_best):
                score = scores[u] * (best_cnt[j] / denom)
                if score >= min_score:
                    heapq.heappush(heap, (-score, np.int64(seq), np.int64(u), best_tok[j], best_to[j]))
                    seq += 1
        # ---- take the best candidate
        if n >= budget or len(heap) == 0:
            break
        neg, _, par, c, t = heapq.heappop(heap)
        u = n
        n += 1
        tokens[u] = c
        parents[u] = par
        scores[u] = -neg
        node_state[u] = t
        node_depth[u] = node_depth[par] + 1
    return tokens[:n].copy(), parents[:n].copy(), scores[:n].copy()
