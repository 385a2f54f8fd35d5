"""The request streams of ``draftless bench --stream`` (and ``scripts/vllm_bench.py --workload``): related
requests built from the public data shipped in ``draftless/data/bench``, with no dependency beyond the standard
library, so a serving engine's environment can read them too.

Workloads (``--workload``):

- ``gsm8k``: GSM8K training problems answered one after another under one fixed instruction with two worked
  examples (the GSM8K answer format: ``<<...>>`` calculations and ``#### N``);
- ``mbpp``: MBPP training tasks in sequence under one instruction;
- ``mbpp-tests``: MBPP training solutions (the code), each sent with one fixed instruction, write unittest tests for
  this function: a code assistant's routine request on one code base, whose answers share their frame (imports,
  the ``TestCase`` class, ``assertEqual`` lines, the closing explanation) but not their content;
- ``gsm8k-json``: GSM8K training problems, each under one fixed extraction instruction that names a JSON schema
  (every quantity as ``{"value", "unit", "what"}``) with one worked example (the file's first problem): the same
  extraction applied to many documents, whose answers share one schema.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WORKLOADS = ("gsm8k", "gsm8k-json", "mbpp", "mbpp-tests")
GSM8K_INSTRUCTION = ("Solve the math word problem. Work it out step by step, one calculation per line, then give "
                     "the final answer on its own line as '#### <number>'.")
MBPP_INSTRUCTION = "Write a Python function for the task below. Reply with the code only."
MBPP_TESTS_INSTRUCTION = ("Write unit tests with the unittest module for the Python function below. Reply with the "
                          "code only.")
GSM8K_JSON_INSTRUCTION = ('Extract every quantity stated in the problem below as JSON: a list of objects with the '
                          'keys "value" (a number), "unit" and "what" (what the number counts). Reply with the JSON '
                          'only.')
GSM8K_JSON_EXAMPLE = ('[\n  {"value": 48, "unit": "clips", "what": "clips Natalia sold in April"},\n'
                      '  {"value": 0.5, "unit": "fraction", "what": "May sales as a fraction of April sales"}\n]')
N_SHOTS = 2


@dataclass(frozen=True)
class StreamRequest:
    """One request of a stream: an id (``gsm8k/17``) and its prompt text."""

    request_id: str
    text: str


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the stream workloads read gsm8k_train.jsonl and "
                                "mbpp_train.jsonl; pass --data DIR)")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _plain_code(code: str) -> str:
    """MBPP's code with Unix line ends and 4-space indents (the file has CRLF and tabs)."""
    return code.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")


# the prompt of one MBPP row (``task_id``, ``text``, ``code``) in each MBPP workload
MBPP_PROMPTS = {
    "mbpp": lambda row: f"{MBPP_INSTRUCTION}\n\nTask: {row['text']}\n",
    "mbpp-tests": lambda row: f"{MBPP_TESTS_INSTRUCTION}\n\n```python\n{_plain_code(row['code'])}\n```\n",
}


def load_stream(workload: str, data_dir: str | Path, n: int, offset: int = 0) -> list[StreamRequest]:
    """``n`` requests of ``workload`` (see the module docstring); the worked examples are the file's first rows and
    the requests start after them (plus ``offset``), so no request is its own example."""
    data_dir = Path(data_dir)
    if workload == "gsm8k":
        rows = _read_jsonl(data_dir / "gsm8k_train.jsonl")
        shots = "\n\n".join(f"Problem: {r['question']}\nSolution:\n{r['answer']}" for r in rows[:N_SHOTS])
        head = f"{GSM8K_INSTRUCTION}\n\n{shots}\n\n"
        picked = rows[N_SHOTS + offset: N_SHOTS + offset + n]
        reqs = [StreamRequest(f"gsm8k/{N_SHOTS + offset + i}", f"{head}Problem: {r['question']}\nSolution:\n")
                for i, r in enumerate(picked)]
    elif workload == "gsm8k-json":
        rows = _read_jsonl(data_dir / "gsm8k_train.jsonl")
        head = f"{GSM8K_JSON_INSTRUCTION}\n\nProblem: {rows[0]['question']}\nJSON:\n{GSM8K_JSON_EXAMPLE}\n\n"
        picked = rows[1 + offset: 1 + offset + n]
        reqs = [StreamRequest(f"gsm8k-json/{1 + offset + i}", f"{head}Problem: {r['question']}\nJSON:\n")
                for i, r in enumerate(picked)]
    elif workload in MBPP_PROMPTS:
        rows = _read_jsonl(data_dir / "mbpp_train.jsonl")
        picked = rows[offset: offset + n]
        reqs = [StreamRequest(f"{workload}/{r.get('task_id', offset + i)}", MBPP_PROMPTS[workload](r))
                for i, r in enumerate(picked)]
    else:
        raise ValueError(f"unknown stream workload {workload!r}; known: {', '.join(WORKLOADS)}")
    if len(reqs) < n:
        raise ValueError(f"{workload} has only {len(reqs)} requests from offset {offset}, {n} asked")
    return reqs
