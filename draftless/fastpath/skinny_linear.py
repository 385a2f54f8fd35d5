"""Small-row linear layers through the skinny kernel, without touching the model.

``SkinnyRouter`` is a ``routing.LinearRouter``: while it routes a model's linear modules (``routing.LinearHooks``),
every call on a CPU float32 input of at most ``max_rows`` rows goes to ``kernels.skinny_gemm.skinny_matmul_t``;
every other call, and every other operation, runs unchanged. The model's modules, weights and code are left as they
are, and the router is active only while the engine verifies a tree whose size the cost curve measured faster this
way.
"""
from __future__ import annotations

import numba
import torch

from .routing import LinearRouter, linear_call_eligible
from .kernels.skinny_gemm import skinny_matmul_t

# Up to this many rows the kernel beat MKL on every layer shape measured (576-1536 wide layers, 49k and 262k-row
# heads on a 2-core AVX-512 CPU); above it MKL's blocked GEMM catches up.
DEFAULT_MAX_ROWS = 16


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` via the skinny kernel. x: float32 [..., I]; weight: float32 [O, I] contiguous;
    bias: float32 [O] or None. Returns float32 [..., O]."""
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1]).contiguous()
    out = torch.empty(rows, weight.shape[0], dtype=torch.float32)
    skinny_matmul_t(flat.detach().numpy(), weight.detach().numpy(), out.numpy())
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


class SkinnyRouter(LinearRouter):
    """Sends float32 CPU linear calls of at most ``max_rows`` rows to the skinny kernel (see module docstring)."""

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS):
        self.max_rows = int(max_rows)

    def prepare(self) -> None:
        """Before a pass: the kernel's threads follow torch's setting, so a caller who limits torch to one thread
        gets one here too."""
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))

    def linear(self, x, weight, bias):
        return skinny_linear(x, weight, bias)

    def route(self, x, weight, bias) -> bool:
        """Whether this ``F.linear(x, weight, bias)`` call goes to the skinny kernel."""
        return linear_call_eligible(x, weight, bias, self.max_rows)
