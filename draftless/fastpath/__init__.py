"""Making the verification pass cheap without changing the model: kernels for few-row linear layers.

``skinny_linear.SkinnyLinearMode`` routes a pass's small-row fp32 ``F.linear`` calls to a numba kernel that reads
each weight once for all rows; the engine turns it on for the tree sizes where the measured cost curve says it is
faster (``engine/cost_curve.py`` measures both paths). See README, "Verification cost".
"""
from __future__ import annotations

import contextlib

import torch

# The ways a verification pass can run: "torch" is the model as it is; "skinny" routes its few-row fp32 linear
# layers to the skinny kernel. The cost curve measures each path at each tree size and the engine runs the faster.
PATHS = ("torch", "skinny")


def path_context(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """A context manager under which a forward runs on ``path`` (one of ``PATHS``).

    "skinny" only applies to fp32 on CPU; elsewhere (CUDA, bf16) it is the same as "torch"."""
    if path not in PATHS:
        raise ValueError(f"unknown verification path {path!r}; expected one of {PATHS}")
    if path == "skinny" and torch.device(device).type == "cpu" and dtype == torch.float32:
        from .skinny_linear import SkinnyLinearMode  # numba is imported only where the skinny path runs

        return SkinnyLinearMode()
    return contextlib.nullcontext()


def available_paths(device: torch.device | str, dtype: torch.dtype) -> tuple[str, ...]:
    """The paths worth measuring on this device and dtype (the skinny kernel is CPU fp32 only)."""
    return PATHS if torch.device(device).type == "cpu" and dtype == torch.float32 else ("torch",)


__all__ = ["PATHS", "available_paths", "path_context"]
