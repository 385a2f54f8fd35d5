"""Hardware-aware tree budgets: how many nodes a verification pass is worth on this model and device.

Verifying n tokens costs t(n) (measured once per model, device and dtype, cached on disk). A tree whose non-root
scores are calibrated probabilities of being reached and accepted yields ``1 + sum(scores)`` tokens per pass in
expectation (the 1 is the bonus token), so the best size maximises ``(1 + sum of the n-1 best scores) /
(t(n) + draft time)``. Root-only (n = 1) is always a candidate: a step never expects to be slower than plain decoding.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tree import DraftTree

# Every size up to 16 (matrix kernels change paths at odd sizes: on one CPU verifying 2 tokens cost more than 4),
# then coarser steps.
DEFAULT_SIZES = tuple(range(1, 17)) + (20, 24, 28, 32, 40, 48, 64)


@dataclass(frozen=True)
class CostCurve:
    """Verification wall time ``ms[i]`` for ``sizes[i]`` tokens (sizes ascending, sizes[0] == 1)."""

    sizes: tuple[int, ...]
    ms: tuple[float, ...]

    def cost(self, n: int | np.ndarray) -> np.ndarray | float:
        """Interpolated cost in ms of verifying ``n`` tokens (linear beyond the last measured size)."""
        sizes = np.asarray(self.sizes, dtype=np.float64)
        ms = np.asarray(self.ms, dtype=np.float64)
        n_arr = np.asarray(n, dtype=np.float64)
        out = np.interp(n_arr, sizes, ms)
        if len(sizes) > 1:
            slope = (ms[-1] - ms[-2]) / (sizes[-1] - sizes[-2])
            out = np.where(n_arr > sizes[-1], ms[-1] + slope * (n_arr - sizes[-1]), out)
        return out if out.ndim else float(out)

    def relative(self) -> dict[int, float]:
        """t(n) / t(1) for each measured size."""
        return {s: round(m / self.ms[0], 3) for s, m in zip(self.sizes, self.ms)}


def best_tree_size(tree: DraftTree, curve: CostCurve, draft_ms: float = 0.0, max_nodes: int | None = None,
                   min_gain: float = 1.0) -> int:
    """Node count (root included) that maximises expected tokens per millisecond for this tree.

    ``min_gain``: a tree is verified only when its expected rate beats plain decoding by this factor, a margin for
    estimation error (a speculative step that disappoints costs more than the plain step it replaced).

    Assumes scores never increase from parent to child, so the best n-node subtree is the n best-scored nodes
    (ties to the lower index, i.e. ancestors first), as ``DraftTree.prune`` picks them.
    """
    limit = len(tree) if max_nodes is None else min(len(tree), max_nodes)
    if limit <= 1:
        return 1
    gains = np.sort(tree.scores[1:].astype(np.float64))[::-1][: limit - 1]
    expected = 1.0 + np.concatenate([[0.0], np.cumsum(gains)])  # expected tokens for n = 1..limit
    # Only measured sizes (and the whole tree) are candidates: interpolating between measurements can hide a
    # size whose kernels are slow.
    sizes = np.asarray(sorted({s for s in curve.sizes if s <= limit} | {limit}), dtype=np.int64)
    rate = expected[sizes - 1] / (np.asarray(curve.cost(sizes)) + draft_ms)
    best = int(np.argmax(rate))
    if sizes[best] > 1 and rate[best] < min_gain * rate[0]:
        return 1
    return int(sizes[best])


def _curve_path(key: str) -> Path:
    from .models import cache_root

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return cache_root() / "cost_curves" / f"{safe}.json"


def curve_key(model) -> str:
    """Identifies a model/device/dtype/thread-count combination whose cost curve can be reused."""
    param = next(model.parameters())
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    return f"{name}-{param.device.type}-{str(param.dtype).replace('torch.', '')}-{torch.get_num_threads()}t-{model.num_parameters()}"


def measure_cost_curve(model, layout, sizes=DEFAULT_SIZES, prefix_len: int = 256, repeats: int = 5) -> CostCurve:
    """Time one verification forward of each size in ``sizes`` after a ``prefix_len``-token cache (median ms)."""
    from .kv_cache import keep_prefix_and, new_cache
    from .attention import tree_attention_mask

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    vocab = model.config.get_text_config(decoder=True).vocab_size
    gen = torch.Generator().manual_seed(0)
    cache = new_cache()
    with torch.inference_mode():
        prefix = torch.randint(0, vocab, (1, prefix_len), generator=gen).to(device)
        model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        inputs = []
        for n in sizes:
            chain = np.tril(np.ones((n, n), dtype=bool))
            mask = tree_attention_mask(layout, chain, np.arange(n), prefix_len, dtype, device)
            ids = torch.randint(0, vocab, (1, n), generator=gen).to(device)
            pos = torch.arange(prefix_len, prefix_len + n, device=device)[None]
            inputs.append((ids, pos, mask))
        # Round-robin over sizes and keep each size's fastest run: interference from other processes only ever
        # adds time, so the minimum is the most repeatable estimate; the first round warms kernels up.
        best = [float("inf")] * len(sizes)
        for r in range(repeats + 1):
            for i, (ids, pos, mask) in enumerate(inputs):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(input_ids=ids, position_ids=pos, attention_mask=mask, past_key_values=cache, use_cache=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if r:
                    best[i] = min(best[i], (time.perf_counter() - t0) * 1000)
                keep_prefix_and(cache, prefix_len, torch.zeros(0, dtype=torch.long))
    # Not forced monotone: when a larger size is measured cheaper the chooser simply prefers it (the extra nodes
    # come free), which is what the hardware rewards.
    return CostCurve(tuple(int(s) for s in sizes), tuple(float(m) for m in best))


def cost_curve_for(model, layout, refresh: bool = False, verbose: bool = False) -> CostCurve:
    """The cached cost curve of ``model`` on its device, measured (a few seconds) on first use."""
    path = _curve_path(curve_key(model))
    if path.exists() and not refresh:
        try:
            data = json.loads(path.read_text())
            return CostCurve(tuple(data["sizes"]), tuple(data["ms"]))
        except (ValueError, KeyError):
            pass  # unreadable cache: measure again
    if verbose:
        print("[draftless] measuring the verification cost curve of this model (once)...", flush=True)
    curve = measure_cost_curve(model, layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump({"key": curve_key(model), "sizes": curve.sizes, "ms": curve.ms}, fh)
    os.replace(tmp, path)
    return curve
