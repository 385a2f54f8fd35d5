"""``draftless profile``: where a verification pass spends its time, per tree size, cache length and path.

For each cache length and each verification path (``draftless.fastpath.PATHS``) it times t(n), one forward over a
chain of n tree tokens, without instrumentation (median of ``repeats``, sizes and paths interleaved so that
interference hits all alike), then runs the same passes again with forward hooks that split the time by stage:
embedding, attention projections, attention core (scores, softmax, rotary, cache write), MLP, norms, LM head, and
the rest (Python and glue between modules). Mask building and cache compaction are timed outside the forward. The
report names the threads and kernel libraries in use and is written as JSON.
"""
from __future__ import annotations

import platform
import time
from collections import defaultdict

import numpy as np
import torch

from ..fastpath import VerificationPaths
from ..hf.attention import inspect_model, tree_attention_mask
from ..hf.compat import cache_keyword, model_path
from ..hf.kv_cache import keep_prefix_and, new_cache

DEFAULT_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
STAGES = ("embedding", "attention_proj", "attention_core", "mlp", "norm", "lm_head", "other")


def _stage_modules(model) -> dict[str, list[torch.nn.Module]]:
    """Modules whose forward time makes up each stage (attention projections are nested in attention)."""
    stages: dict[str, list] = defaultdict(list)
    stages["embedding"].append(model.get_input_embeddings())
    head = model.get_output_embeddings()
    if head is not None:
        stages["lm_head"].append(head)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if "Norm" in type(module).__name__:
            stages["norm"].append(module)
        elif leaf in ("self_attn", "attn", "attention"):
            stages["attention"].append(module)
            for child in module.children():
                weight = getattr(child, "weight", None)
                if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                    stages["attention_proj"].append(child)
        elif leaf in ("mlp", "feed_forward"):
            stages["mlp"].append(module)
    return stages


class _StageTimer:
    """Forward hooks that add each stage's wall time (ms) to ``self.ms`` while installed."""

    def __init__(self, model):
        self.ms: dict[str, float] = defaultdict(float)
        self._handles = []
        for stage, modules in _stage_modules(model).items():
            for module in modules:
                # first of the pre-hooks and last of the hooks, so that the time a fast path's routing hooks
                # spend computing a linear call (fastpath/routing.py) counts in its stage
                self._handles.append(module.register_forward_pre_hook(self._start(module), prepend=True))
                self._handles.append(module.register_forward_hook(self._stop(stage, module)))
        self._started: dict[int, float] = {}

    def _start(self, module):
        def hook(*_):
            self._started[id(module)] = time.perf_counter()
        return hook

    def _stop(self, stage, module):
        def hook(*_):
            self.ms[stage] += (time.perf_counter() - self._started.pop(id(module))) * 1000
        return hook

    def remove(self):
        for handle in self._handles:
            handle.remove()


def environment() -> dict:
    """Threads, kernel libraries and CPU capability that decide the kernels a pass runs."""
    import numba
    import transformers

    config = torch.__config__.show()
    libs = [line.strip("- ").strip() for line in config.splitlines()
            if any(key in line for key in ("Math Kernel", "MKL-DNN", "OpenMP", "CPU capability"))]
    return {
        "torch": torch.__version__, "transformers": transformers.__version__, "numba": numba.__version__,
        "machine": platform.machine(), "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.config.THREADING_LAYER, "kernel_libraries": libs,
        "linear_kernels": {"torch": "aten linear -> BLAS sgemm/sgemv (MKL on this build)",
                           "skinny": "draftless.fastpath numba kernel for <= 16 rows, BLAS above",
                           "packed": "oneDNN linear on weights packed once, for <= 64 rows, BLAS above"},
        "mkldnn_available": torch.backends.mkldnn.is_available(),
    }


def profile_model(model, sizes=DEFAULT_SIZES, cache_lengths=(128, 512, 1024), repeats: int = 5,
                  paths: tuple[str, ...] | None = None, progress=None) -> dict:
    """Measure t(n) per size, cache length and path (default: every path available for the model, see
    ``VerificationPaths``), with a stage split. Returns a JSON-able report (ms)."""
    layout = inspect_model(model, chains_ok=True)  # the sizes are measured on chains
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    verification = VerificationPaths(model)
    paths = tuple(paths) if paths is not None else verification.available
    vocab = model.config.get_text_config(decoder=True).vocab_size
    gen = torch.Generator().manual_seed(0)
    report = {"environment": environment(), "model": model_path(model),
              "dtype": str(dtype).replace("torch.", ""), "device": device.type, "repeats": repeats, "runs": []}
    with torch.inference_mode(), verification.attached():
        for prefix_len in cache_lengths:
            cache = new_cache()
            prefix = torch.randint(0, vocab, (1, prefix_len), generator=gen).to(device)
            model(input_ids=prefix, **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
            cases = {}
            for n in sizes:
                t0 = time.perf_counter()
                mask = tree_attention_mask(layout, np.tril(np.ones((n, n), dtype=bool)), np.arange(n), prefix_len,
                                           dtype, device)
                mask_ms = (time.perf_counter() - t0) * 1000
                ids = torch.randint(0, vocab, (1, n), generator=gen).to(device)
                pos = torch.arange(prefix_len, prefix_len + n, device=device)[None]
                cases[n] = (ids, pos, mask, mask_ms)

            # the loop's cache, cases and prefix_len are bound as defaults: run is only called in this iteration
            def run(n, path, cases=cases, cache=cache, prefix_len=prefix_len):
                ids, pos, mask, _ = cases[n]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with verification.context(path):
                    model(input_ids=ids, position_ids=pos, attention_mask=mask, **{cache_keyword(model): cache},
                          use_cache=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                keep_prefix_and(cache, prefix_len, torch.arange(max(1, n // 2), device=device))
                keep_prefix_and(cache, prefix_len, torch.zeros(0, dtype=torch.long, device=device))
                return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

            plain = defaultdict(list)
            for r in range(repeats + 1):  # round 0 warms up
                for n in sizes:
                    for path in paths:
                        ms, compact_ms = run(n, path)
                        if r:
                            plain[(n, path)].append((ms, compact_ms))
            timer = _StageTimer(model)
            staged = defaultdict(list)
            try:
                for _ in range(max(1, repeats // 2)):
                    for n in sizes:
                        for path in paths:
                            timer.ms.clear()
                            ms, _ = run(n, path)
                            stages = dict(timer.ms)
                            stages["attention_core"] = stages.pop("attention", 0.0) - stages.get("attention_proj", 0.0)
                            stages["other"] = ms - sum(stages.values())
                            staged[(n, path)].append(stages)
            finally:
                timer.remove()
            for path in paths:
                t1 = float(np.median([m for m, _ in plain[(1, path)]]))
                for n in sizes:
                    ms = float(np.median([m for m, _ in plain[(n, path)]]))
                    split = {s: round(float(np.median([d.get(s, 0.0) for d in staged[(n, path)]])), 3)
                             for s in STAGES}
                    report["runs"].append({
                        "cache_len": prefix_len, "path": path, "n": n, "ms": round(ms, 3),
                        "relative": round(ms / t1, 3), "mask_ms": round(cases[n][3], 3),
                        "compact_ms": round(float(np.median([c for _, c in plain[(n, path)]])), 3),
                        "stages_ms_instrumented": split,
                    })
            if progress is not None:
                progress(prefix_len)
    report["packed_weights_mb"] = round(verification.packed_bytes / 2**20, 1)  # the packed path's extra memory
    return report


def format_report(report: dict) -> str:
    """A plain-text table per cache length: t(n) and t(n)/t(1) per path, and the stage split of the fastest."""
    env = report["environment"]
    lines = [f"model {report['model']} ({report['dtype']}, {report['device']}); torch {env['torch']} "
             f"threads {env['torch_threads']}, numba threads {env['numba_threads']}",
             "kernels: " + "; ".join(env["kernel_libraries"])]
    by_cache = defaultdict(list)
    for row in report["runs"]:
        by_cache[row["cache_len"]].append(row)
    for cache_len, rows in by_cache.items():
        paths = list(dict.fromkeys(r["path"] for r in rows))
        lines.append(f"\ncache {cache_len}: t(n) ms (t(n)/t(1)) per path; "
                     "stage split (ms, instrumented) of the fastest")
        header = "   n  " + "  ".join(f"{p:>16}" for p in paths) + "  " + " ".join(f"{s[:10]:>10}" for s in STAGES)
        lines.append(header + "   mask  compact  fastest")
        for n in sorted({r["n"] for r in rows}):
            cells = {r["path"]: r for r in rows if r["n"] == n}
            best = min(cells.values(), key=lambda r: r["ms"])
            lines.append(f"{n:4d}  " + "  ".join(f"{cells[p]['ms']:9.1f} ({cells[p]['relative']:.2f})" for p in paths)
                         + "  " + " ".join(f"{best['stages_ms_instrumented'][s]:10.1f}" for s in STAGES)
                         + f"  {best['mask_ms']:5.2f}  {best['compact_ms']:6.2f}  {best['path']}")
    return "\n".join(lines)
