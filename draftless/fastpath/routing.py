"""The shared shape of the fast paths: a ``TorchFunctionMode`` that sends some ``F.linear`` calls elsewhere.

A subclass says which calls it takes (``route``) and how it computes them (``linear``); every other call, and every
other function, runs unchanged. The model's modules, weights and code are left as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class LinearRouter(TorchFunctionMode):
    """Inside ``with mode:``, ``F.linear(x, weight, bias)`` runs as ``mode.linear(x, weight, bias)`` when
    ``mode.route(x, weight, bias)`` is true, as itself otherwise."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x = args[0] if args else kwargs.get("input")
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if self.route(x, weight, bias):
                return self.linear(x, weight, bias)
        return func(*args, **kwargs)

    def route(self, x, weight, bias) -> bool:
        """Whether this ``F.linear`` call is computed by ``linear``."""
        raise NotImplementedError

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, weight, bias)``, computed this path's way."""
        raise NotImplementedError
