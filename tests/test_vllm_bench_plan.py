"""``scripts/vllm_bench.py``'s planning, without vLLM: which prompts each level runs, the methods' configs and
environments, and the stream workloads it reads."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "vllm_bench.py"
_spec = importlib.util.spec_from_file_location("vllm_bench", _PATH)
vllm_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vllm_bench)


def test_levels_take_the_first_prompts_or_disjoint_slices():
    counts = vllm_bench.level_prompt_counts("16,16,48", [1, 4, 16], 80)
    assert counts == {1: 16, 4: 16, 16: 48}
    assert vllm_bench.level_prompt_counts(None, [1, 4], 10) == {1: 10, 4: 10}
    assert vllm_bench.level_slices(counts, [1, 4, 16], False) == {1: slice(0, 16), 4: slice(0, 16), 16: slice(0, 48)}
    disjoint = vllm_bench.level_slices({1: 16, 4: 32}, [1, 4], True)
    assert disjoint == {1: slice(0, 16), 4: slice(16, 48)}
    with pytest.raises(SystemExit):
        vllm_bench.level_prompt_counts("16,16", [1, 4, 16], 80)     # one count short
    for bad in ("0,4", "16,99"):                                     # an empty level, more prompts than loaded
        with pytest.raises(SystemExit):
            vllm_bench.level_prompt_counts(bad, [1, 4], 20)


def test_methods_map_to_vllm_configs_and_worker_environments():
    assert vllm_bench.speculative_config("none", 4, 8) is None
    assert vllm_bench.speculative_config("suffix", 4, 8)["suffix_decoding_max_cached_requests"] == 0
    assert "suffix_decoding_max_cached_requests" not in vllm_bench.speculative_config("suffix-memory", 4, 8)
    for name in ("draftless", "draftless:sam+history"):
        cfg = vllm_bench.speculative_config(name, 4, 8)
        assert cfg["model"] == vllm_bench.DRAFTLESS_CLASS and cfg["num_speculative_tokens"] == 8
    assert vllm_bench.worker_env("draftless:sam+history")["DRAFTLESS_VLLM_SOURCES"] == "sam,history"
    with pytest.raises(ValueError):
        vllm_bench.speculative_config("eagle", 4, 8)


def test_a_stream_workload_is_read_from_the_shared_data(tmp_path):
    rows = [{"task_id": i, "text": f"task {i}", "code": "def f():\n\treturn 1"} for i in range(5)]
    (tmp_path / "mbpp_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = type("Args", (), {"workload": "mbpp", "data": str(tmp_path), "limit": 3, "prompts": None,
                             "per_category": None})()
    prompts = vllm_bench.load_requests(args)
    assert [p["id"] for p in prompts] == ["mbpp/0", "mbpp/1", "mbpp/2"] and "task 1" in prompts[1]["text"]
    args.limit = 9
    with pytest.raises(SystemExit):
        vllm_bench.load_requests(args)
