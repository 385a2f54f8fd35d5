"""Small-row linear layers through the skinny kernel, without touching the model.

``SkinnyRouter`` is a ``routing.LinearRouter``: while it routes a model's linear modules (``routing.LinearHooks``),
every call on a CPU float32 input of at most ``max_rows`` rows goes to a numba kernel of ``kernels.skinny_gemm``
(``streaming_matmul_t`` up to ``STREAMING_MAX_ROWS`` rows, ``skinny_matmul_t`` above);
every other call, and every other operation, runs unchanged. The model's modules, weights and code are left as they
are, and the router is active only while the engine verifies a tree whose size the cost curve measured faster this
way.
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from .kernels.skinny_gemm import STREAMING_MAX_ROWS, skinny_matmul_t, streaming_matmul_t
from .routing import LinearRouter, input_eligible, weight_eligible

# Up to this many rows the kernel beat MKL on every layer shape measured (576-1536 wide layers, 49k and 262k-row
# heads on a 2-core AVX-512 CPU); above it MKL's blocked GEMM catches up.
DEFAULT_MAX_ROWS = 16


def _array(t: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array (no copy)."""
    return (t.detach() if t.requires_grad else t).numpy()


def _skinny(x: torch.Tensor, w: np.ndarray, b: np.ndarray | None) -> torch.Tensor:
    """x: float32 [..., I] CPU tensor; w: float32 [O, I] C-contiguous array; b: float32 [O] or None. Returns
    float32 [..., O]. Plain numpy around the kernel: each torch call costs ~2-3 us in Python here, and a pass
    makes 211 of these calls (SmolLM2); the output is allocated in its final shape, so no torch reshape follows."""
    n_in = x.shape[-1]
    flat = _array(x).reshape(-1, n_in)  # a view of a contiguous input, a C-ordered copy of any other
    if not flat.flags.c_contiguous:
        flat = np.ascontiguousarray(flat)
    rows = flat.shape[0]
    out = np.empty((*x.shape[:-1], w.shape[0]), dtype=np.float32)
    (streaming_matmul_t if rows <= STREAMING_MAX_ROWS else skinny_matmul_t)(flat, w, out.reshape(rows, -1))
    if b is not None:
        out += b
    return torch.from_numpy(out)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` via the skinny kernel. x: float32 [..., I]; weight: float32 [O, I] contiguous;
    bias: float32 [O] or None. Returns float32 [..., O]."""
    return _skinny(x, _array(weight), None if bias is None else _array(bias))


class SkinnyRouter(LinearRouter):
    """Sends float32 CPU linear calls of at most ``max_rows`` rows to the skinny kernels (see module docstring).

    Keeps, per weight it has seen, the weight and bias, their data pointers and numpy views (no copies) and whether
    the weight is one the kernels take, so that the per-call work is the input's checks and the kernel; an entry is
    renewed when the weight or bias object, or the storage under either, changed (``param.data = ...``)."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS):
        self.max_rows = int(max_rows)
        # id(weight) -> (weight, bias, weight pointer, bias pointer, weight array or None, bias array or None)
        self._arrays: dict[int, tuple] = {}

    def prepare(self) -> None:
        """Before a pass: the kernel's threads follow torch's setting, so a caller who limits torch to one thread
        gets one here too."""
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))

    def _entry(self, weight, bias) -> tuple:
        entry = self._arrays.get(id(weight))
        if (entry is None or entry[0] is not weight or entry[1] is not bias or entry[2] != weight.data_ptr()
                or (bias is not None and entry[3] != bias.data_ptr())):
            ok = weight_eligible(weight, bias)
            entry = (weight, bias, weight.data_ptr(), None if bias is None else bias.data_ptr(),
                     _array(weight) if ok else None, _array(bias) if ok and bias is not None else None)
            self._arrays[id(weight)] = entry
        return entry

    def compute(self, x, weight, bias):
        """The call through a skinny kernel, or None where it does not qualify (see ``route``); the checks and the
        computation in one pass, for the hooks."""
        if type(x) is not torch.Tensor or x.dtype is not torch.float32 or not x.is_cpu:
            return None
        shape = x.shape
        if not shape:
            return None
        n_in = shape[-1]
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return None  # the kernels have no backward: a call autograd would record keeps aten's linear
        entry = self._entry(weight, bias)
        w = entry[4]
        if w is None or n_in == 0 or w.shape[1] != n_in:
            return None
        if not 0 < x.numel() // n_in <= self.max_rows:
            return None
        return _skinny(x, w, entry[5])

    def linear(self, x, weight, bias):
        entry = self._entry(weight, bias)
        if entry[4] is None:
            return skinny_linear(x, weight, bias)
        return _skinny(x, entry[4], entry[5])

    def route(self, x, weight, bias) -> bool:
        """Whether this ``F.linear(x, weight, bias)`` call goes to the skinny kernel."""
        if not input_eligible(x, self.max_rows) or not isinstance(weight, torch.Tensor):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return False  # the kernel has no backward: a call autograd would record keeps aten's linear
        entry = self._entry(weight, bias)
        return entry[4] is not None and weight.shape[1] == x.shape[-1]
