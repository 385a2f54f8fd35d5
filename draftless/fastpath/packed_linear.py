"""Tree-sized linear layers through oneDNN with prepacked weights, without touching the model.

MKL's sgemm repacks the weight on every call, which is what makes a CPU verification pass grow with its row count
from ~8 rows on; oneDNN's linear on a weight reordered once into its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``) reads that layout directly and stays much flatter in rows.

``PackedWeights`` owns the packed copies: one per weight tensor, made on first use and kept for as long as the
owner (an engine's ``VerificationPaths``) lives, keyed by the weight tensor itself; nothing is stored on the model
or its tensors. ``PackedRouter`` is a ``routing.LinearRouter``: while it routes a model's linear modules
(``routing.LinearHooks``), every call on a CPU float32 input of at most ``max_rows`` rows whose weight is a 2-D
contiguous float32 CPU tensor runs ``torch.ops.mkldnn._linear_pointwise`` on the packed weight; every other call
runs unchanged.

Memory: a packed copy of every linear weight the passes reach, the same size as the weight (fp32). For Gemma 3
270M that is ~1.1 GB (the tied 262144 x 640 embedding/head alone is 0.67 GB; it is packed once, as the head's
weight); for SmolLM2 135M ~0.5 GB.
"""
from __future__ import annotations

import torch

from .routing import LinearRouter, linear_call_eligible

# Past 64 rows MKL's blocked GEMM amortises its own packing as well, and a verification pass is rarely larger;
# bigger calls (a batch's pass over many rows, a prefill) keep MKL.
DEFAULT_MAX_ROWS = 64
# The row count the packed layout is tuned for (oneDNN's batch-size hint): measured on a 2-core AVX-512 CPU, a
# pack for 16 rows served every row count from ~6 to 64 about as well as a pack for that count.
PACK_ROWS = 16


def packed_linear_supported() -> bool:
    """Whether this torch build can run the packed path: oneDNN present and both private ops registered."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # looking an op up raises when this build does not register it
        _ = torch.ops.mkldnn._reorder_linear_weight
        _ = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return False
    return True


class PackedWeights:
    """oneDNN-packed copies of weight tensors, made on first use (see module docstring for the memory cost).

    Keyed by ``id(weight)`` with the weight itself kept referenced (so the id cannot be reused by another tensor
    while the entry lives); an entry is repacked when the weight changed since it was packed (its storage or its
    in-place version counter), so a model whose weights are reloaded in place is never run on stale packs."""

    def __init__(self, pack_rows: int = PACK_ROWS):
        self.pack_rows = int(pack_rows)
        self._packs: dict[int, tuple[torch.Tensor, int, int, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._packs)

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed copies (each the size of its fp32 weight)."""
        return sum(w.numel() * 4 for w, _, _, _ in self._packs.values())

    def clear(self) -> None:
        """Drop every packed copy (the next packed call packs again)."""
        self._packs.clear()

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        """The packed copy of ``weight`` (float32 [O, I], contiguous, CPU), packing it now if needed."""
        entry = self._packs.get(id(weight))
        if entry is not None and entry[0] is weight and entry[1] == weight.data_ptr() and entry[2] == weight._version:
            return entry[3]
        # no_grad rather than inference_mode: the pack stays a normal tensor, usable inside and outside either
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.pack_rows)
        self._packs[id(weight)] = (weight, weight.data_ptr(), weight._version, packed)
        return packed

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` on the packed weight. x: float32 [..., I]; weight: float32 [O, I]
        contiguous; bias: float32 [O] or None. Returns float32 [..., O] (sums reassociated: ~1e-6 relative)."""
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, self.get(weight),
                                                 None if bias is None else bias.contiguous(), "none", [], "")
        return out.reshape(*x.shape[:-1], weight.shape[0])


class PackedRouter(LinearRouter):
    """Sends eligible float32 CPU linear calls of 1 to ``max_rows`` rows to oneDNN on ``weights``' packed copies
    (see module docstring)."""

    def __init__(self, weights: PackedWeights, max_rows: int = DEFAULT_MAX_ROWS):
        self.weights = weights
        self.max_rows = int(max_rows)

    def linear(self, x, weight, bias):
        return self.weights.linear(x, weight, bias)

    def route(self, x, weight, bias) -> bool:
        """Whether this ``F.linear(x, weight, bias)`` call goes to the packed weight."""
        return linear_call_eligible(x, weight, bias, self.max_rows)
