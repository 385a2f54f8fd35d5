"""The shared shape of the fast paths: a model's ``nn.Linear`` calls computed another way, through module hooks.

A *router* (``LinearRouter``) says which calls it takes (``route``) and how it computes them (``linear``).
``LinearHooks`` puts a forward pre-hook on every plain ``nn.Linear`` of a model (a public ``nn.Module`` hook; the
model's code, modules and weights are left as they are): while a router is active, the pre-hook computes a call the
router takes and hands the module, as its input, a stand-in that carries the result (``ComputedInput``, an empty
tensor subclass): the module's own ``F.linear`` reaches the stand-in's ``__torch_function__``, torch's documented
override protocol, which returns the carried result without computing anything. Every other call, and every other
operation of the model, runs unchanged.

Why a stand-in that answers ``F.linear`` and not an empty input plus a forward hook that swaps the output (the first
design): the module then multiplied zero rows through aten's matmul and ran a second hook, about 8 us a call in a
real pass against about 2 for the stand-in, and a SmolLM2 pass makes 211 of these calls.

Why hooks and not a ``TorchFunctionMode``: a mode sees every torch call of the forward (about 2,300 in one
SmolLM2 pass) and its Python dispatch made passes 3-15% slower on the 2-core CPU here (two interleaved runs, 1-32
nodes); the hooks run on the 211 linear calls only. Registering hooks costs too (about 3 ms for 211 modules), so
they are attached once for a whole request (``attached``) and only switched on and off per pass (``routing``).
"""
from __future__ import annotations

import contextlib
import threading

import torch


class LinearRouter:
    """A way to compute some ``F.linear(x, weight, bias)`` calls: ``route`` says which, ``linear`` computes them,
    ``compute`` does both in one call (what the hooks use)."""

    def prepare(self) -> None:
        """Called when the router becomes active (before a pass): settings the computation follows."""

    def compute(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        """``F.linear(x, weight, bias)`` computed this path's way, or None for a call this router does not take (the
        module then computes it itself). A router may override it with one pass over its checks: the hooks call it
        for every linear call of a pass (211 in a SmolLM2 pass), so microseconds here add up to a few percent."""
        return self.linear(x, weight, bias) if self.route(x, weight, bias) else None

    def route(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Whether this call is computed by ``linear``."""
        raise NotImplementedError

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, weight, bias)``, computed this path's way."""
        raise NotImplementedError


def input_eligible(x, max_rows: int) -> bool:
    """Whether ``x`` is an input the fast paths take: a float32 CPU tensor [..., I] of 1 to ``max_rows`` rows."""
    return (
        isinstance(x, torch.Tensor)
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() >= 1
        and x.shape[-1] > 0
        and 0 < x.numel() // x.shape[-1] <= max_rows
    )


def weight_eligible(weight, bias) -> bool:
    """Whether a linear layer's ``weight`` (float32 [O, I], contiguous, CPU) and ``bias`` (float32 [O] CPU, or
    None) are ones the fast paths take."""
    return (
        isinstance(weight, torch.Tensor)
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and weight.is_contiguous()
        and weight.device.type == "cpu"
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.dtype == torch.float32
                              and bias.device.type == "cpu" and bias.shape == (weight.shape[0],)
                              and bias.is_contiguous()))
    )


def linear_call_eligible(x, weight, bias, max_rows: int) -> bool:
    """Whether ``F.linear(x, weight, bias)`` is one the fast paths can compute: ``input_eligible``,
    ``weight_eligible``, matching widths, and no autograd to record (the fast kernels have no backward)."""
    return (
        input_eligible(x, max_rows)
        and weight_eligible(weight, bias)
        and weight.shape[1] == x.shape[-1]
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad)))
    )


def hookable_linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The modules of ``model`` whose calls the hooks may compute: ``nn.Linear`` (or a subclass that keeps its
    ``forward``) with no hooks of anyone else's, so that no other hook ever sees the stand-in input. Others
    (quantised or adapter-wrapped linears, modules with offloading hooks) run as they are."""
    return [m for m in model.modules()
            if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward
            and not m._forward_pre_hooks and not m._forward_hooks]


class ComputedInput(torch.Tensor):
    """The stand-in input the pre-hook gives a linear module whose call a router computed: an empty float tensor
    ``[0, I]`` carrying the result in ``result`` (float32 [..., O]). ``F.linear`` on it returns that result, once;
    any other operation on it raises, naming the operation (no module in ``hookable_linears`` does anything else
    with its input). One per thread and input width, re-armed for every call."""

    result: torch.Tensor | None = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear and args and isinstance(args[0], ComputedInput):
            stand_in = args[0]
            result, stand_in.result = stand_in.result, None
            if result is not None:
                return result
        name = getattr(func, "__name__", repr(func))
        raise RuntimeError(f"draftless's linear stand-in reached {name}: only a plain nn.Linear's F.linear may use it "
                           "(a module whose forward does more than F.linear must not be hooked)")


class LinearHooks:
    """Hooks on one model's plain linear modules through which an active ``LinearRouter`` computes their calls
    (see the module docstring). One per model user (an engine's ``VerificationPaths``, which a pool of engines
    shares).

    Thread contract: the router is active in the thread that entered ``routing`` only. The hooks stay on the
    model while any thread holds an ``attached`` scope (counted under a lock), and a call in any other thread (a
    plain ``model.generate``, another engine's pass on another path) finds no active router in its own thread
    and runs the module as it is."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._local = threading.local()  # per thread: ``router`` and ``stand_ins`` ((width, dtype) -> ComputedInput)
        self._lock = threading.Lock()  # guards the attach count and the handles
        self._handles: list = []
        self._depth = 0
        self._modules: list[torch.nn.Linear] = []  # the modules hooked while attached

    @property
    def router(self) -> LinearRouter | None:
        """The router active in the calling thread (None: every call runs the module as it is)."""
        return getattr(self._local, "router", None)

    def _stand_in(self, width: int, dtype: torch.dtype) -> ComputedInput:
        """This thread's stand-in for inputs of ``width`` columns (made once per thread and width)."""
        stand_ins = getattr(self._local, "stand_ins", None)
        if stand_ins is None:
            stand_ins = self._local.stand_ins = {}
        stand_in = stand_ins.get((width, dtype))
        if stand_in is None:
            with torch.inference_mode(False):  # a normal tensor: usable inside and outside inference mode
                stand_in = torch.empty((0, width), dtype=dtype).as_subclass(ComputedInput)
            stand_ins[(width, dtype)] = stand_in
        return stand_in

    def modules(self) -> list[torch.nn.Linear]:
        """The linear modules whose calls a router computes: those hooked now, or, while no scope is open, those
        ``attached`` would hook (``hookable_linears`` cannot tell them apart while our own hooks are on)."""
        with self._lock:
            return list(self._modules) if self._depth else hookable_linears(self.model)

    @contextlib.contextmanager
    def attached(self):
        """Hooks on the model for the duration (nested and concurrent uses share one set); inactive until
        ``routing``."""
        with self._lock:
            if self._depth == 0:
                self._modules = hookable_linears(self.model)
                for module in self._modules:
                    self._handles.append(module.register_forward_pre_hook(self._before))
            self._depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for handle in self._handles:
                        handle.remove()
                    self._handles.clear()
                    self._modules = []

    @contextlib.contextmanager
    def routing(self, router: LinearRouter):
        """``router`` computes the calls it takes, in the calling thread, for the duration (attaching the hooks
        for it if no ``attached`` scope is open, which costs their registration)."""
        with self.attached():
            router.prepare()
            previous, self._local.router = self.router, router
            try:
                yield router
            finally:
                self._local.router = previous

    def _before(self, module: torch.nn.Linear, args: tuple):
        if torch.compiler.is_compiling():
            # traced into a compiled forward (fastpath/compiled.py), which puts the kernel into the graph itself:
            # nothing here may become part of the graph or of its guards
            return None
        router = getattr(self._local, "router", None)
        if router is None or len(args) != 1:
            return None
        x = args[0]
        # the parameters straight from the module's registry: ``module.weight`` goes through nn.Module.__getattr__
        params = module._parameters
        result = router.compute(x, params["weight"], params.get("bias"))
        if result is None:
            return None
        stand_in = self._stand_in(x.shape[-1], x.dtype)
        stand_in.result = result  # the module's F.linear returns it (ComputedInput.__torch_function__)
        return (stand_in,)


def route_linears(model: torch.nn.Module, router: LinearRouter):
    """A context under which ``router`` computes the calls it takes of ``model``'s plain linear modules (hooks
    attached for the duration only)."""
    return LinearHooks(model).routing(router)
