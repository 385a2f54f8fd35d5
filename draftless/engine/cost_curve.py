"""The verification cost curve t(n): wall time of one verification pass over n tree tokens on this model, device,
dtype and thread count.

Measured once (``measure_cost_curve``, a few seconds) and cached as JSON under ``state_dir()/cost_curves/`` (see
``draftless.paths``), keyed by ``curve_key``. The budget chooser (``budget.py``) and ``auto`` drafter choice
(``drafters/spec.py``) read it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file
from ..hf.attention import tree_attention_mask
from ..hf.kv_cache import keep_prefix_and, new_cache
from ..paths import safe_filename, state_dir

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


def _curve_path(key: str) -> Path:
    return state_dir() / "cost_curves" / f"{safe_filename(key)}.json"


def curve_key(model) -> str:
    """Identifies a model/device/dtype/thread-count combination whose cost curve can be reused."""
    param = next(model.parameters())
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    return f"{name}-{param.device.type}-{str(param.dtype).replace('torch.', '')}-{torch.get_num_threads()}t-{model.num_parameters()}"


def measure_cost_curve(model, layout, sizes=DEFAULT_SIZES, prefix_len: int = 256, repeats: int = 5) -> CostCurve:
    """Time one verification forward of each size in ``sizes`` after a ``prefix_len``-token cache (median ms)."""
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
    with atomic_file(path) as fh:
        json.dump({"key": curve_key(model), "sizes": curve.sizes, "ms": curve.ms}, fh)
    return curve
