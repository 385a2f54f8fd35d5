"""Numba kernel for the ``k`` largest entries of each row of a float matrix (``draftless.index.top_k`` is the
facade): one pass over the row in blocks, where a block whose maximum does not beat the current k-th best is
skipped after one vectorised max; only the few blocks that hold a new candidate are walked entry by entry."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 64  # entries whose maximum is taken before the block is walked; 64 float32 = four 512-bit vectors


@njit(parallel=True, cache=True, nogil=True)
def row_top_k(x, k, ids, vals):
    """For every row ``r`` of ``x`` (float32 [n, V], C-contiguous, ``1 <= k <= V``): ``ids[r]`` (int32 [k]) the
    columns of its ``k`` largest entries, largest first, and ``vals[r]`` (float32 [k]) their values. Among equal
    values the lower column comes first; NaN entries are never taken (every comparison with NaN is false)."""
    n, width = x.shape
    for r in prange(n):
        row = x[r]
        best_v = vals[r]
        best_i = ids[r]
        filled = 0
        threshold = -np.inf
        for start in range(0, width, BLOCK):
            stop = min(start + BLOCK, width)
            block_max = -np.inf
            for j in range(start, stop):
                v = row[j]
                block_max = v if v > block_max else block_max
            if filled == k and not block_max > threshold:
                continue
            for j in range(start, stop):
                v = row[j]
                if filled < k:
                    p = filled
                    filled += 1
                elif v > threshold:
                    p = k - 1
                else:
                    continue
                # insertion into the sorted best list: move smaller entries one down (the last one falls off)
                while p > 0 and v > best_v[p - 1]:
                    best_v[p] = best_v[p - 1]
                    best_i[p] = best_i[p - 1]
                    p -= 1
                best_v[p] = v
                best_i[p] = j
                if filled == k:
                    threshold = best_v[k - 1]
    return ids, vals
