"""Numba kernel for ``x @ w.T`` when x has only a few rows (a verification pass over a small draft tree).

MKL's sgemm on this kind of CPU computes 2 or 3 rows as separate matrix-vector products and switches to a path
that costs 1.3-1.5x one row from 4 rows on, so a pass over a small tree reads every weight matrix several times or
waits on memory. Here each weight row is loaded once and reused for up to 8 input rows held in L1, two weight rows
at a time (so each input element loaded feeds two multiply-adds), while the weight rows a few columns ahead are
prefetched (``prefetch.prefetch_row``): with few rows per weight, computing is quick and the loop would otherwise
outrun the hardware prefetcher and stall. fp32 in, fp32 accumulation out: the sums are reassociated (vectorised),
so results differ from MKL's in the last bits, as MKL's own 1-row and n-row paths differ from each other.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .prefetch import prefetch_row

# Reassociation and contraction let LLVM vectorise the dot products with several accumulators and fused
# multiply-adds; NaN and Inf keep their IEEE meaning (no 'nnan'/'ninf').
_FASTMATH = {"reassoc", "contract", "nsz"}
# Output columns per parallel task: enough tasks to balance two cores on a 576-wide layer, long enough runs of
# weight rows for the prefetch to run ahead within a task.
_COLUMNS_PER_TASK = 64
# How many weight rows ahead of the one being computed the prefetch asks for (1, 2 and 4 measured within noise of
# each other; 8 and 16 slower).
_PREFETCH_AHEAD = 2


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def skinny_matmul_t(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """``out[m, o] = sum_i x[m, i] * w[o, i]``.

    x: float32 [M, I] C-contiguous; w: float32 [O, I] C-contiguous (a linear layer's weight); out: float32 [M, O].
    Output columns are taken two at a time (the last one alone when O is odd), rows eight at a time, then four, two
    and one, so that each weight element loaded from memory feeds up to eight multiply-adds and each input element
    two.
    """
    n_rows, n_in = x.shape
    n_out = w.shape[0]
    n_tasks = (n_out + _COLUMNS_PER_TASK - 1) // _COLUMNS_PER_TASK
    for task in nb.prange(n_tasks):
        first = task * _COLUMNS_PER_TASK
        last = min(n_out, first + _COLUMNS_PER_TASK)
        for o in range(first, last, 2):
            if o + _PREFETCH_AHEAD + 1 < last:
                prefetch_row(w, o + _PREFETCH_AHEAD)
                prefetch_row(w, o + _PREFETCH_AHEAD + 1)
            # an odd last column pairs with itself (computed and written twice, the same value)
            p = o + 1 if o + 1 < last else o
            m = 0
            while m + 8 <= n_rows:
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
                b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = np.float32(0.0)
                for i in range(n_in):
                    u = w[o, i]
                    v = w[p, i]
                    x0 = x[m, i]
                    x1 = x[m + 1, i]
                    x2 = x[m + 2, i]
                    x3 = x[m + 3, i]
                    x4 = x[m + 4, i]
                    x5 = x[m + 5, i]
                    x6 = x[m + 6, i]
                    x7 = x[m + 7, i]
                    a0 += x0 * u
                    a1 += x1 * u
                    a2 += x2 * u
                    a3 += x3 * u
                    a4 += x4 * u
                    a5 += x5 * u
                    a6 += x6 * u
                    a7 += x7 * u
                    b0 += x0 * v
                    b1 += x1 * v
                    b2 += x2 * v
                    b3 += x3 * v
                    b4 += x4 * v
                    b5 += x5 * v
                    b6 += x6 * v
                    b7 += x7 * v
                out[m, o] = a0
                out[m + 1, o] = a1
                out[m + 2, o] = a2
                out[m + 3, o] = a3
                out[m + 4, o] = a4
                out[m + 5, o] = a5
                out[m + 6, o] = a6
                out[m + 7, o] = a7
                out[m, p] = b0
                out[m + 1, p] = b1
                out[m + 2, p] = b2
                out[m + 3, p] = b3
                out[m + 4, p] = b4
                out[m + 5, p] = b5
                out[m + 6, p] = b6
                out[m + 7, p] = b7
                m += 8
            if m + 4 <= n_rows:
                a0 = a1 = a2 = a3 = np.float32(0.0)
                b0 = b1 = b2 = b3 = np.float32(0.0)
                for i in range(n_in):
                    u = w[o, i]
                    v = w[p, i]
                    x0 = x[m, i]
                    x1 = x[m + 1, i]
                    x2 = x[m + 2, i]
                    x3 = x[m + 3, i]
                    a0 += x0 * u
                    a1 += x1 * u
                    a2 += x2 * u
                    a3 += x3 * u
                    b0 += x0 * v
                    b1 += x1 * v
                    b2 += x2 * v
                    b3 += x3 * v
                out[m, o] = a0
                out[m + 1, o] = a1
                out[m + 2, o] = a2
                out[m + 3, o] = a3
                out[m, p] = b0
                out[m + 1, p] = b1
                out[m + 2, p] = b2
                out[m + 3, p] = b3
                m += 4
            if m + 2 <= n_rows:
                a0 = a1 = np.float32(0.0)
                b0 = b1 = np.float32(0.0)
                for i in range(n_in):
                    u = w[o, i]
                    v = w[p, i]
                    x0 = x[m, i]
                    x1 = x[m + 1, i]
                    a0 += x0 * u
                    a1 += x1 * u
                    b0 += x0 * v
                    b1 += x1 * v
                out[m, o] = a0
                out[m + 1, o] = a1
                out[m, p] = b0
                out[m + 1, p] = b1
                m += 2
            if m < n_rows:
                a0 = np.float32(0.0)
                b0 = np.float32(0.0)
                for i in range(n_in):
                    x0 = x[m, i]
                    a0 += x0 * w[o, i]
                    b0 += x0 * w[p, i]
                out[m, o] = a0
                out[m, p] = b0


# Up to this many input rows ``streaming_matmul_t`` beat ``skinny_matmul_t`` over all of SmolLM2's linear layers
# (1 row: 16 ms against 24 for the 538 MB of weights, 8 rows: 36 against 47, 12 rows: 54 against 60; at 16 rows
# 67 against 62; 2-core AVX-512 CPU, one interleaved run).
STREAMING_MAX_ROWS = 12


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def streaming_matmul_t(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """``out[m, o] = sum_i x[m, i] * w[o, i]``, for a few rows of x.

    x: float32 [M, I] C-contiguous; w: float32 [O, I] C-contiguous (a linear layer's weight); out: float32 [M, O].
    Each thread walks its contiguous share of weight rows once, in memory order, and takes each row against up to
    four input rows at a time (one weight load, four multiply-adds). One forward stream per core is what the
    hardware prefetcher follows best: with one input row this reads the weights at about the speed of a plain sum
    over them, where ``skinny_matmul_t``'s interleaved 64-row tasks and software prefetches reach about two thirds
    of it. With many rows the input no longer stays in registers and ``skinny_matmul_t`` wins (see
    ``STREAMING_MAX_ROWS``).
    """
    n_rows, n_in = x.shape
    for o in nb.prange(w.shape[0]):
        m = 0
        while m + 4 <= n_rows:
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(n_in):
                u = w[o, i]
                a0 += x[m, i] * u
                a1 += x[m + 1, i] * u
                a2 += x[m + 2, i] * u
                a3 += x[m + 3, i] * u
            out[m, o] = a0
            out[m + 1, o] = a1
            out[m + 2, o] = a2
            out[m + 3, o] = a3
            m += 4
        while m + 2 <= n_rows:
            a0 = a1 = np.float32(0.0)
            for i in range(n_in):
                u = w[o, i]
                a0 += x[m, i] * u
                a1 += x[m + 1, i] * u
            out[m, o] = a0
            out[m + 1, o] = a1
            m += 2
        if m < n_rows:
            a0 = np.float32(0.0)
            for i in range(n_in):
                a0 += x[m, i] * w[o, i]
            out[m, o] = a0
