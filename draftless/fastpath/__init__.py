"""Making the verification pass cheap without changing the model: faster kernels for tree-sized linear layers.

A *verification path* is a way to run one pass: "torch" is the model as it is; "skinny" routes its few-row fp32
linear calls to a numba kernel (``kernels/``) that reads each weight once for all rows (``skinny_linear.py``); "packed"
routes its tree-sized fp32 linear calls to oneDNN on weights packed once into oneDNN's blocked layout
(``packed_linear.py``). Both reach the calls through hooks on the model's ``nn.Linear`` modules
(``routing.LinearHooks``), attached for a whole request (``attached``) and switched on per pass (``context``).
"compiled", opt-in (``VerificationPaths(model, compile=True)``), runs the forward through ``torch.compile`` with
its few-row linear calls on the skinny kernel (``compiled.py``); a pass runs on the callable ``forward(path)``
returns (the compiled forward for it, the model for the others), under ``context(path)``.
The cost curve (``engine/cost_curve.py``) measures every available path at every tree size and the engine runs each
pass on the fastest for its size. ``VerificationPaths`` is the per-model object (one engine's, or shared by a pool
of engines serving the same model from several threads) that says which paths apply to a model and enters them,
and owns what they keep (the packed weights). A path is active only in the thread whose pass entered it. See
docs/benchmarks.md, "Verification cost".
"""
from __future__ import annotations

import contextlib
import threading

import torch

# Every path a cost curve may name, in the order they are measured and reported.
PATHS = ("torch", "skinny", "packed", "compiled")


class VerificationPaths:
    """The verification paths of one model, for whoever runs its passes (an engine, a cost-curve measurement, the
    profiler). Build it from the model once and keep it: the "packed" path's packed weights live here, made by
    ``prepare`` (or else on the first packed pass that reaches each weight) and dropped with this object (or by
    ``release``).

    ``available``: the paths that differ from "torch" on this model's device and dtype, "torch" first. "skinny" and
    "packed" apply to CPU float32 only, "packed" also needs oneDNN (``torch.backends.mkldnn``) and its linear ops;
    elsewhere ``context`` of either is the same as "torch", so a curve measured on another build still runs.

    Memory: while "packed" is used, one packed copy of every linear weight it reaches (fp32, the weights' size:
    ~1.1 GB for Gemma 3 270M, ~0.5 GB for SmolLM2 135M); ``release(keep)`` frees it when the curve chose no packed
    size.

    ``compile=True`` (CPU float32 only, else a ``ValueError``): "compiled" is available too (``compiled.py``; its
    first passes compile for minutes on a small CPU). The hooks stay on the model through its compiled passes as
    through any other (the engine's passes all run inside ``attached``), so the compiled graphs' guards on them
    hold from one pass to the next."""

    def __init__(self, model: torch.nn.Module, compile: bool = False):
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.model = model
        paths = ["torch"]
        self._hooks = None
        self._compiled = None  # CompiledForward, with compile=True
        if compile:
            if self.device.type != "cpu" or self.dtype != torch.float32:
                raise ValueError(f"the compiled verification path runs float32 models on a CPU; this model is "
                                 f"{str(self.dtype).replace('torch.', '')} on {self.device.type}")
            from .compiled import CompiledForward  # imports torch's compiler stack: only when asked for

            self._compiled = CompiledForward(model)
        if self.device.type == "cpu" and self.dtype == torch.float32:
            from .packed_linear import packed_linear_supported
            from .routing import LinearHooks

            paths.append("skinny")
            if packed_linear_supported():
                paths.append("packed")
            self._hooks = LinearHooks(model)
        if self._compiled is not None:
            paths.append("compiled")
        self.available: tuple[str, ...] = tuple(paths)
        self._lock = threading.Lock()  # guards making the routers and the packed store (engines may share this)
        self._packed = None  # PackedWeights, made by ``prepare`` or the first packed pass
        self._skinny = None  # SkinnyRouter, made on the first skinny pass

    def attached(self):
        """A context for a run of many passes (a request, a cost-curve measurement): the routing hooks stay on
        the model for its duration, so that ``context`` only switches them (attaching per pass costs ~3 ms)."""
        return self._hooks.attached() if self._hooks is not None else contextlib.nullcontext()

    @property
    def compiled(self) -> bool:
        """Whether the "compiled" path is available (built with ``compile=True``)."""
        return self._compiled is not None

    def context(self, path: str):
        """A context manager under which a forward (a tree pass) in the calling thread runs on ``path`` (one of
        ``PATHS``); a path that is not available here runs as "torch". "compiled" is not a context but a callable
        (``forward``): its context is the model as it is."""
        if path not in PATHS:
            raise ValueError(f"unknown verification path {path!r}; expected one of {PATHS}")
        return self._linear_context(path)

    def forward(self, path: str):
        """The callable a pass on ``path`` calls with the model's keywords: the compiled forward for "compiled"
        where it is available, else the model itself (to call under ``context(path)``)."""
        if path == "compiled" and self._compiled is not None:
            return self._compiled
        return self.model

    def _linear_context(self, path: str):
        """The context under which the model's linear calls run on ``path``."""
        if path not in self.available or path in ("torch", "compiled"):
            return contextlib.nullcontext()
        if path == "skinny":
            with self._lock:
                if self._skinny is None:
                    from .skinny_linear import SkinnyRouter  # numba is imported only where the skinny path runs

                    self._skinny = SkinnyRouter()
            return self._hooks.routing(self._skinny)
        return self._hooks.routing(self._packed_router())

    def _packed_router(self):
        from .packed_linear import PackedRouter, PackedWeights

        with self._lock:
            if self._packed is None:
                self._packed = PackedWeights()
            return PackedRouter(self._packed)

    @property
    def packed_bytes(self) -> int:
        """Bytes the packed path's weight copies hold now."""
        return 0 if self._packed is None else self._packed.nbytes

    def prepare(self, paths) -> None:
        """Make ready what the paths a cost curve chose (``paths``) need, and free what the others hold: with
        "packed" among them, pack every weight the hooks route now (~4 s for SmolLM2, longer for Gemma 3 on two
        cores), so that the cost falls where the engine learns its curve, not inside whichever later request first
        verifies a tree big enough for the packed path."""
        self.release(keep=paths)
        if "packed" not in paths or "packed" not in self.available:
            return
        from .packed_linear import PackedWeights
        from .routing import weight_eligible

        with self._lock:
            if self._packed is None:
                self._packed = PackedWeights()
        for module in self._hooks.modules():
            if weight_eligible(module.weight, module.bias):
                self._packed.get(module.weight)

    def release(self, keep=()) -> None:
        """Free what the paths not in ``keep`` hold (the packed weights unless "packed" is kept): call once the
        cost curve is known, with the paths it chose."""
        if "packed" not in keep and self._packed is not None:
            self._packed.clear()


__all__ = ["PATHS", "VerificationPaths"]
