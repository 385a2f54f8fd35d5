"""The verification cost curve t(n): wall time of one verification pass over n tree tokens on this model, device,
dtype and thread count.

Measured once (``measure_cost_curve``, a few seconds) and cached as JSON under ``state_dir()/cost_curves/`` (see
``draftless.paths``), keyed by ``curve_key``. The budget chooser (``budget.py``) and ``auto`` drafter choice
(``drafters/spec.py``) read it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file
from ..fastpath import VerificationPaths
from ..hf.attention import learned_position_table, tree_attention_mask
from ..hf.compat import cache_keyword, grouped_query_sdpa_forced, model_path
from ..hf.kv_cache import keep_prefix_and, new_cache
from ..paths import safe_filename, state_dir

# Every size up to 16 (matrix kernels change paths at odd sizes: on one CPU verifying 2 tokens cost more than 4),
# then coarser steps.
DEFAULT_SIZES = tuple(range(1, 17)) + (20, 24, 28, 32, 40, 48, 64)


@dataclass(frozen=True)
class CostCurve:
    """Verification wall time ``ms[i]`` for ``sizes[i]`` tokens (sizes ascending, sizes[0] == 1).

    ``paths[i]``: the verification path (``draftless.fastpath.PATHS``) that was fastest at ``sizes[i]`` and that
    ``ms[i]`` was measured on; the engine runs a pass of that size on that path, so the curve is the one it runs.
    ``by_path``: every path's measured ms per size, for reports (empty when loaded from an older format).
    """

    sizes: tuple[int, ...]
    ms: tuple[float, ...]
    paths: tuple[str, ...] = ()
    by_path: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if not self.paths:
            object.__setattr__(self, "paths", ("torch",) * len(self.sizes))
        if not (len(self.sizes) == len(self.ms) == len(self.paths)) or not self.sizes or self.sizes[0] != 1:
            raise ValueError("a cost curve needs aligned sizes, ms and paths, starting at size 1")

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

    def path_for(self, n: int) -> str:
        """The path to verify ``n`` tokens on: that of the smallest measured size >= n (the largest beyond)."""
        i = int(np.searchsorted(np.asarray(self.sizes), n))
        return self.paths[min(i, len(self.paths) - 1)]

    def relative(self) -> dict[int, float]:
        """t(n) / t(1) for each measured size, on the path the engine runs at that size."""
        return {s: round(m / self.ms[0], 3) for s, m in zip(self.sizes, self.ms)}

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes), "ms": list(self.ms), "paths": list(self.paths),
                "by_path": {p: list(v) for p, v in self.by_path.items()}}

    @classmethod
    def from_json(cls, data: dict) -> CostCurve:
        return cls(tuple(int(s) for s in data["sizes"]), tuple(float(m) for m in data["ms"]),
                   tuple(data.get("paths") or ()), {p: tuple(v) for p, v in (data.get("by_path") or {}).items()})


# Bumped whenever what a cached curve means changes (v2: one path per size, preallocated cache; v3: the "packed"
# path measured too; v4: the fast paths routed through module hooks, 5-15% cheaper; v5: grouped-query attention
# without the per-head copy of the cache; v6: the skinny path's streaming kernel, a third cheaper at 1-4 rows; v7:
# one pre-hook per linear call, its result handed over through a stand-in input, 2-3% cheaper), so a curve measured
# by an older version is measured again instead of misleading the chooser.
CURVE_FORMAT = 7


def _curve_path(key: str) -> Path:
    return state_dir() / "cost_curves" / f"{safe_filename(key)}.json"


def curve_key(model, compiled: bool = False) -> str:
    """Identifies a model/device/dtype/thread-count combination whose cost curve can be reused (``compiled``: the
    curve measured with the compiled path among the others, ``VerificationPaths(compile=True)``)."""
    param = next(model.parameters())
    name = model_path(model) or model.config.model_type
    gqa = "-gqa" if grouped_query_sdpa_forced() else ""  # tree passes cheaper: a curve of its own
    paths = "-compiled" if compiled else ""
    return (f"{name}-{param.device.type}-{str(param.dtype).replace('torch.', '')}-{torch.get_num_threads()}t-"
            f"{model.num_parameters()}{gqa}{paths}-v{CURVE_FORMAT}")


def measure_cost_curve(model, layout, sizes=DEFAULT_SIZES, prefix_len: int = 256, repeats: int = 5,
                       paths: tuple[str, ...] | None = None,
                       verification: VerificationPaths | None = None) -> CostCurve:
    """Time one verification forward of each size in ``sizes`` after a ``prefix_len``-token cache, on every
    verification path (``paths``, default: those available on the model's device and dtype); each size keeps its
    fastest path (fastest run of ``repeats``, in ms). ``verification``: the engine's ``VerificationPaths``, so
    that what a path prepares while measured (the packed weights, the compiled forward) is what the engine then
    runs on; default: a fresh one for this measurement."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    # the prefix plus the largest size stays inside the positions the model was built for: a learned or
    # precomputed position table (GPT-2's wpe, CodeGen's sin/cos buffer, MPT's ALiBi table) indexes past its end
    config = model.config.get_text_config(decoder=True)
    limits = [learned_position_table(model)] + [getattr(config, name, None) for name in
                                                ("max_position_embeddings", "n_positions", "max_seq_len")]
    limits = [int(v) for v in limits if isinstance(v, int) and v > 0]
    if limits:
        prefix_len = max(1, min(prefix_len, min(limits) - max(sizes)))
    verification = verification if verification is not None else VerificationPaths(model)
    paths = tuple(paths) if paths is not None else verification.available
    vocab = model.config.get_text_config(decoder=True).vocab_size
    gen = torch.Generator().manual_seed(0)
    cache = new_cache()
    with torch.inference_mode(), verification.attached():
        prefix = torch.randint(0, vocab, (1, prefix_len), generator=gen).to(device)
        model(input_ids=prefix, **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
        inputs = []
        for n in sizes:
            chain = np.tril(np.ones((n, n), dtype=bool))
            mask = tree_attention_mask(layout, chain, np.arange(n), prefix_len, dtype, device)
            ids = torch.randint(0, vocab, (1, n), generator=gen).to(device)
            pos = torch.arange(prefix_len, prefix_len + n, device=device)[None]
            inputs.append((ids, pos, mask))
        # Round-robin over sizes and paths, keeping each one's fastest run: interference from other processes only
        # ever adds time, so the minimum is the most repeatable estimate, and interleaving makes the paths'
        # comparison fair; the first round warms kernels up (compiles the skinny kernel, packs the weights, and on
        # the compiled path compiles the forward).
        best = {p: [float("inf")] * len(sizes) for p in paths}
        for r in range(repeats + 1):
            for i, (ids, pos, mask) in enumerate(inputs):
                for path in paths:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    forward = verification.forward(path)
                    t0 = time.perf_counter()
                    with verification.context(path):
                        # verify_tree's keywords, in its order: a compiled forward's graph then serves both
                        forward(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                                output_hidden_states=False, **{cache_keyword(model): cache})
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if r:
                        best[path][i] = min(best[path][i], (time.perf_counter() - t0) * 1000)
                    keep_prefix_and(cache, prefix_len, torch.zeros(0, dtype=torch.long))
    # Not forced monotone: when a larger size is measured cheaper the chooser simply prefers it (the extra nodes
    # come free), which is what the hardware rewards.
    chosen = [min(paths, key=lambda p: best[p][i]) for i in range(len(sizes))]
    return CostCurve(tuple(int(s) for s in sizes), tuple(float(best[p][i]) for i, p in enumerate(chosen)),
                     tuple(chosen), {p: tuple(float(m) for m in v) for p, v in best.items()})


def cost_curve_for(model, layout, refresh: bool = False, verbose: bool = False,
                   verification: VerificationPaths | None = None) -> CostCurve:
    """The cached cost curve of ``model`` on its device, measured (several seconds) on first use, through
    ``verification`` (see ``measure_cost_curve``; a compiled one has a curve of its own)."""
    key = curve_key(model, compiled=verification is not None and verification.compiled)
    path = _curve_path(key)
    if path.exists() and not refresh:
        try:
            return CostCurve.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # unreadable cache: measure again
    if verbose:
        print("[draftless] measuring the verification cost curve of this model (once)...", flush=True)
    curve = measure_cost_curve(model, layout, verification=verification)
    with atomic_file(path) as fh:
        json.dump({"key": key, **curve.to_json()}, fh)
    return curve
