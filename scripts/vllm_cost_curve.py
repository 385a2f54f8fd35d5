"""vLLM's cost of verifying draft tokens, measured: ms per engine step for c running requests and k draft tokens each.

The draftless proposer (``draftless.integrations.vllm``) decides how many draft tokens a step is worth from such a
grid (``draftless.integrations.step_costs.StepCosts``): its default was measured with this script on this project's
CPU, and ``DRAFTLESS_VLLM_STEP_COSTS=report.json`` gives it the serving machine's own. The script runs vLLM with a
proposer that always drafts exactly k tokens per row (``FixedDraftProposer``), times the decode steps after the
prefill at each concurrency c (median step), and also fits a line ``ms = a + b * T`` over the grid (T = c * (k + 1)
tokens in a step) for reference. Run it in the vLLM environment (see ``scripts/vllm_bench.py`` for the install),
with the thread settings the server will use:

    LD_PRELOAD=/work/vllm-venv/lib/libiomp5.so VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 \
        OMP_NUM_THREADS=2 /work/vllm-venv/bin/python scripts/vllm_cost_curve.py --model smollm2-135m \
        --ks 0,1,2,4,8 --steps 30 --json bench-results/vllm-cost-smollm2-quiet.json

One engine per k (vLLM fixes ``num_speculative_tokens`` at start-up), each in its own child process. Prompts are
synthetic token ranges (300 tokens): the step time does not depend on which tokens they are.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
PROPOSER = "vllm_cost_curve.FixedDraftProposer"


class FixedDraftProposer:
    """A vLLM ``custom_class`` proposer drafting exactly ``$DRAFTLESS_FIXED_K`` tokens for every row that
    committed something: what vLLM then pays per step is the cost of k drafts.

    The draft is the vocabulary's last id repeated, a token the model (practically) never chooses: every draft is
    rejected, so every row commits one token a step and all rows of a level finish together (a draft that were
    accepted would end some requests early and mix smaller batches into the timed steps)."""

    def __init__(self, vllm_config, *args, **kwargs):
        self.k = int(os.environ.get("DRAFTLESS_FIXED_K", "1"))
        self.token = int(vllm_config.model_config.get_vocab_size()) - 1

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None):
        return [[self.token] * self.k if len(s) else [] for s in sampled_token_ids]

    def load_model(self, *args, **kwargs) -> None:
        """Nothing to load."""


def _worker(model_path: str, k: int, levels: list[int], steps: int, prompt_len: int) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = None if k == 0 else {"method": "custom_class", "model": PROPOSER, "num_speculative_tokens": k}
    llm = LLM(model=model_path, dtype="float32", enforce_eager=True, enable_prefix_caching=False,
              max_num_seqs=max(levels), seed=0, speculative_config=spec, max_model_len=prompt_len + steps + 64)
    engine = llm.llm_engine
    prompts = [list(range(100 + i, 100 + i + prompt_len)) for i in range(max(levels))]

    def level(c: int, n_steps: int, tag: str) -> float:
        # ignore_eos: every request runs n_steps decode steps; with k rejected drafts each step commits 1 token.
        params = SamplingParams(temperature=0.0, max_tokens=n_steps, ignore_eos=True)
        for i in range(c):
            engine.add_request(f"{tag}-{i}", TokensPrompt(prompt_token_ids=prompts[i]), params)
        times: list[float] = []
        while engine.has_unfinished_requests():
            start = time.perf_counter()
            engine.step()
            times.append((time.perf_counter() - start) * 1000)
        # The first step is the prefill (all c prompts are added before it), the last may finish requests; the
        # median of the rest ignores the odd step a busy machine stalls.
        decode = sorted(times[1:-1]) or times
        return decode[len(decode) // 2]

    result = {}
    for c in levels:
        level(c, 6, f"warmup{c}")  # first steps at a new batch shape run slower (allocations, kernel selection)
        result[str(c)] = level(c, steps, f"c{c}")
    return result


def fit(grid: dict[int, dict[str, float]]) -> dict:
    """Least-squares ``ms = a + b * T`` over every (k, c) cell, T = c * (k + 1); returns a, b and b / a (a summary
    only: the proposer reads the grid itself)."""
    import numpy as np

    rows = [(int(c) * (k + 1), ms) for k, cells in grid.items() for c, ms in cells.items()]
    t = np.array([r[0] for r in rows], dtype=np.float64)
    y = np.array([r[1] for r in rows], dtype=np.float64)
    b, a = np.polyfit(t, y, 1)
    return {"a_ms": float(a), "b_ms_per_token": float(b), "b_over_a": float(b / a) if a > 0 else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="HF folder or draftless short name")
    ap.add_argument("--ks", default="0,1,2,3,4,6,8", help="draft tokens per row (0: no speculation)")
    ap.add_argument("--concurrency", default="1,2,4,8,16")
    ap.add_argument("--steps", type=int, default=40, help="decode steps timed per level")
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker-k", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.worker_k is not None:
        sys.path.insert(0, str(SCRIPTS))  # vLLM imports PROPOSER by module name
        print("RESULT " + json.dumps(_worker(args.model_path, args.worker_k, levels, args.steps, args.prompt_len)))
        return
    sys.path.insert(0, str(SCRIPTS))
    from vllm_bench import resolve_model

    model_path = resolve_model(args.model)
    grid: dict[int, dict[str, float]] = {}
    for k in (int(x) for x in args.ks.split(",")):
        cmd = [sys.executable, __file__, "--worker-k", str(k), "--model-path", model_path, "--concurrency",
               args.concurrency, "--steps", str(args.steps), "--prompt-len", str(args.prompt_len)]
        env = {**os.environ, "DRAFTLESS_FIXED_K": str(k), "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
               "PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
            raise SystemExit(f"k={k}: the vLLM worker failed:\n{tail}")
        grid[k] = json.loads(line[len("RESULT "):])
        print(f"k={k}: " + ", ".join(f"c={c} {ms:.1f} ms/step" for c, ms in grid[k].items()), flush=True)
    report = {"model": model_path, "steps": args.steps, "prompt_len": args.prompt_len, "ms_per_step": grid,
              "fit": fit(grid), "load_1min": os.getloadavg()[0],
              "threads": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")}}
    print(json.dumps(report["fit"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
