"""DraftlessProposer inside a real vLLM engine: greedy identity against vLLM without speculation, and slot reuse.

Runs only where vLLM is importable (its own virtual environment: ``scripts/vllm_bench.py`` has the install lines)
and the SmolLM2 HF folder draftless converts exists. Each engine runs in a child process (one engine per process,
as vLLM's offline API expects), pinned to what the parent may use; about a minute per engine on one CPU core.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (it needs its own venv: see scripts/vllm_bench.py)")

MODEL = Path(os.environ.get("DRAFTLESS_CACHE", Path.home() / ".cache" / "draftless")) / "models" / "smollm2-135m"
if not (MODEL / "config.json").is_file():
    pytest.skip(f"no converted SmolLM2 folder at {MODEL} (run `draftless generate` once in the main env)",
                allow_module_level=True)

PROMPTS = [
    "Repeat this list twice: apples, pears, plums, cherries, grapes.",
    "Write a Python function that returns the sum of a list, then the same function with a docstring.",
    "Summarize: The cat sat on the mat. The cat sat on the mat again. Then the cat left the mat.",
    "List the days of the week, then list them in reverse order.",
    "Explain what a suffix automaton is in two sentences.",
]

# One engine, all prompts with at most MAX_SEQS in flight (so rows are reused), greedy; prints a JSON line with the
# outputs and, for the draftless proposer, its counters (read in the worker through vLLM's collective_rpc).
CHILD = r"""
import json, sys
from vllm import LLM, SamplingParams
model, spec, max_seqs, prompts = json.loads(sys.argv[1])
llm = LLM(model=model, dtype="float32", max_model_len=1024, max_num_seqs=max_seqs, enforce_eager=True,
          enable_prefix_caching=False, speculative_config=spec, seed=0)
outs = llm.chat([[{"role": "user", "content": p}] for p in prompts],
                SamplingParams(temperature=0.0, max_tokens=48), use_tqdm=False)
stats = None
if spec:
    stats = llm.collective_rpc(lambda w: dict(getattr(w, "worker", w).model_runner.drafter.drafter.stats))[0]
print("RESULT " + json.dumps({"outputs": [list(o.outputs[0].token_ids) for o in outs], "stats": stats}))
"""


def run_engine(spec: dict | None, max_seqs: int) -> dict:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE":
           os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    arg = json.dumps([str(MODEL), spec, max_seqs, PROMPTS])
    proc = subprocess.run([sys.executable, "-c", CHILD, arg], env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def reference():
    return run_engine(None, 2)


def test_greedy_outputs_equal_vllm_without_speculation_and_rows_are_reused(reference):
    spec = {"method": "custom_class", "model": "draftless.integrations.vllm.DraftlessProposer",
            "num_speculative_tokens": 6}
    result = run_engine(spec, 2)
    assert result["outputs"] == reference["outputs"]
    stats = result["stats"]
    # Two rows served five requests: each request got its own state (none was mistaken for a row's old request)
    # and the proposer did draft and got drafts accepted.
    assert stats["new_requests"] == len(PROMPTS), stats
    assert stats["proposed"] > 0 and stats["accepted"] > 0, stats
