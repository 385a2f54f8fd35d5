"""Numba kernel for ``x @ w.T`` when x has only a few rows (a verification pass over a small draft tree).

MKL's sgemm on this kind of CPU computes 2 or 3 rows as 2 or 3 separate matrix-vector products and switches to a
path that costs 2-3x one row from 4 rows on, so a pass over a small tree reads every weight matrix several times.
Here each weight row is loaded once and reused for up to 4 input rows held in L1, so the pass stays close to the
cost of reading the weights once. fp32 in, fp32 accumulation out: the sums are reassociated (vectorised), so
results differ from MKL's in the last bits, as MKL's own 1-row and n-row paths differ from each other.
"""
from __future__ import annotations

import numba as nb
import numpy as np

# Reassociation and contraction let LLVM vectorise the dot products with several accumulators and fused
# multiply-adds; NaN and Inf keep their IEEE meaning (no 'nnan'/'ninf').
_FASTMATH = {"reassoc", "contract", "nsz"}
# Output columns per parallel task: small enough to balance two cores on a 576-wide layer, large enough to
# amortise the task's start.
_COLUMNS_PER_TASK = 32


@nb.njit(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
def skinny_matmul_t(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """``out[m, o] = sum_i x[m, i] * w[o, i]``.

    x: float32 [M, I] C-contiguous; w: float32 [O, I] C-contiguous (a linear layer's weight); out: float32 [M, O].
    Rows of x are taken four, then two, then one at a time so that each weight element loaded from memory feeds
    up to four multiply-adds.
    """
    n_rows, n_in = x.shape
    n_out = w.shape[0]
    n_tasks = (n_out + _COLUMNS_PER_TASK - 1) // _COLUMNS_PER_TASK
    for task in nb.prange(n_tasks):
        first = task * _COLUMNS_PER_TASK
        last = min(n_out, first + _COLUMNS_PER_TASK)
        for o in range(first, last):
            m = 0
            while m + 4 <= n_rows:
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                s2 = np.float32(0.0)
                s3 = np.float32(0.0)
                for i in range(n_in):
                    wi = w[o, i]
                    s0 += x[m, i] * wi
                    s1 += x[m + 1, i] * wi
                    s2 += x[m + 2, i] * wi
                    s3 += x[m + 3, i] * wi
                out[m, o] = s0
                out[m + 1, o] = s1
                out[m + 2, o] = s2
                out[m + 3, o] = s3
                m += 4
            if m + 2 <= n_rows:
                s0 = np.float32(0.0)
                s1 = np.float32(0.0)
                for i in range(n_in):
                    wi = w[o, i]
                    s0 += x[m, i] * wi
                    s1 += x[m + 1, i] * wi
                out[m, o] = s0
                out[m + 1, o] = s1
                m += 2
            if m < n_rows:
                s0 = np.float32(0.0)
                for i in range(n_in):
                    s0 += x[m, i] * w[o, i]
                out[m, o] = s0
