"""The "compiled" verification path: the model's unmodified forward through ``torch.compile``, its few-row linear
calls on the skinny kernel.

What it removes: a thin model's pass on a CPU spends a third of its time outside the matrix products, in the
Python of the model's modules and the dispatch of its small torch calls (about 2,300 in a SmolLM2-135M pass; 9-12 ms
of a ~30 ms one-node pass, measured by running the same 30-layer forward with 64-wide layers: 8.6 ms eager, 4.3 ms
compiled). ``torch.compile``
(TorchDynamo captures the forward as a graph, TorchInductor generates fused C++ for it) runs those operations
as a few generated loops with no Python between them.

What it keeps: the matrix products. Inductor would hand them to MKL, whose few-row products are what the skinny
kernel exists to avoid (``skinny_linear.py``); so the compile backend here rewrites every ``F.linear`` of the
captured graph into ``draftless::linear``, a torch custom operator (``torch.library.custom_op``, opaque to
Inductor) that runs the skinny kernel for calls of at most ``SKINNY_MAX_ROWS`` rows and aten's linear for the
others. The model's code, modules and weights are left as they are, and nothing is hooked: the compiled path
replaces the hooked "skinny" path instead of stacking on it.

Costs: the first passes compile (about 35-100 s for SmolLM2-135M on a 2-core CPU, twice: one graph for one-node
passes, which Dynamo specialises, one for every larger size; Inductor caches its output on disk, so a later process
compiles faster); a pass with another layout (a batch, hidden states asked for) compiles another graph. Compiled
passes of one model run one at a time (``CompiledForward`` holds a lock): Dynamo's compiled code is shared by every
thread that calls it, and the two cores here are busy with one pass anyway.

Numerics: Inductor fuses the small operations (norms, rotary, softmax) and may sum in another order than eager
torch, as the skinny kernel does for the products; logits differ from eager ones in the last bits (~1e-5 on
SmolLM2), greedy output is tested identical to ``model.generate``'s on every tiny architecture and both real models.
"""
from __future__ import annotations

import os
import shutil
import threading

import torch

from .routing import linear_call_eligible
from .skinny_linear import DEFAULT_MAX_ROWS as SKINNY_MAX_ROWS  # the kernel's range; MKL's blocked GEMM above it
from .skinny_linear import skinny_linear


@torch.library.custom_op("draftless::linear", mutates_args=())
def kernel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: the skinny kernel for float32 CPU calls of at most ``SKINNY_MAX_ROWS`` rows
    (``routing.linear_call_eligible``), aten's linear for any other. x: [..., I]; weight: [O, I]; bias: [O] or None.
    Returns [..., O] in fresh storage (a custom operator's output may not alias an input)."""
    if linear_call_eligible(x, weight, bias, SKINNY_MAX_ROWS):
        return skinny_linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


@kernel_linear.register_fake
def _kernel_linear_shape(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


_LINEAR_TARGETS = (torch._C._nn.linear, torch.nn.functional.linear)


def linears_to_kernel(gm: torch.fx.GraphModule) -> int:
    """Rewrite every ``F.linear`` call of a Dynamo graph into ``draftless::linear`` (same arguments, bias made
    positional). Returns how many calls were rewritten."""
    rewritten = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _LINEAR_TARGETS:
            args = list(node.args) + [None] * (3 - len(node.args))
            if "bias" in node.kwargs:
                args[2] = node.kwargs["bias"]
            if "weight" in node.kwargs:
                args[1] = node.kwargs["weight"]
            node.target = torch.ops.draftless.linear.default
            node.args, node.kwargs = tuple(args[:3]), {}
            rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor's CPU code would be built with (``$CXX``, else ``g++``, ``clang++`` or ``c++`` on
    the PATH), or None where there is none."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((found for found in map(shutil.which, names) if found), None)


class CompiledForward:
    """``model``'s forward compiled (see the module docstring), compiled lazily on first call and per new layout.

    Call it as the model: same keywords, same output. ``graphs``: how many graphs the backend has compiled;
    ``linears``: how many linear calls it rewrote onto the kernel across them."""

    def __init__(self, model: torch.nn.Module):
        if cpp_compiler() is None:
            # Inductor would fail deep inside the first pass; say what is missing before any pass runs
            raise ValueError("the compiled verification path needs a C++ compiler (g++ or clang++ on the PATH, or "
                             "$CXX), as torch.compile on a CPU does; install one or leave compile off")
        self.model = model
        self.graphs = 0
        self.linears = 0
        self._lock = threading.Lock()
        self._compiled = torch.compile(model.forward, dynamic=True, backend=self._backend)

    def _backend(self, gm: torch.fx.GraphModule, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.linears += linears_to_kernel(gm)
        self.graphs += 1
        return compile_fx(gm, example_inputs)

    def __call__(self, **kwargs):
        with self._lock:
            return self._compiled(**kwargs)
