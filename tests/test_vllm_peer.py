"""``scripts/vllm_peer.py``'s pure parts: the summary arithmetic and the markdown, on hand-made records (no model, no
vLLM; the script itself is checked by running it, see its docstring)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "vllm_peer.py"
_spec = importlib.util.spec_from_file_location("vllm_peer", _PATH)
vllm_peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vllm_peer)

METHODS = ["hf", "auto", "vllm-ngram"]


def _records():
    """Two prompts in two categories. hf: 10 tokens/s; auto: 20; vllm-ngram: 16 on prompt 0 and differs from hf
    at position 2 of prompt 1."""
    ref = {0: [1, 2, 3, 4], 1: [5, 6, 7, 8, 9, 10, 11, 12]}
    rows = []
    for p, cat in ((0, "qa"), (1, "rag")):
        n = len(ref[p])
        rows.append({"prompt": p, "category": cat, "method": "hf", "tokens": ref[p], "wall_s": n / 10, "passes": n})
        rows.append({"prompt": p, "category": cat, "method": "auto", "tokens": ref[p], "wall_s": n / 20,
                     "passes": n // 2})
    rows.append({"prompt": 0, "category": "qa", "method": "vllm-ngram", "tokens": ref[0], "wall_s": 0.25,
                 "passes": 3.0, "accepted": 1.0, "drafts": 2.0, "draft_tokens": 8.0})
    rows.append({"prompt": 1, "category": "rag", "method": "vllm-ngram", "tokens": [5, 6, 0, 8, 9, 10, 11, 12],
                 "wall_s": 1.0, "passes": 6.0, "accepted": 2.0, "drafts": 2.0, "draft_tokens": 8.0})
    return rows


def test_summary_rates_ratios_and_identity():
    s = vllm_peer.summarize(_records(), METHODS)
    m = s["methods"]
    assert m["hf"]["tokens_per_s"] == pytest.approx(10.0)
    assert m["auto"]["tokens_per_s"] == pytest.approx(20.0)
    assert m["vllm-ngram"]["tokens_per_s"] == pytest.approx(12 / 1.25)  # sum of tokens over sum of walls
    assert m["auto"]["vs_vllm_ngram"] == pytest.approx(20.0 / 9.6)
    assert m["auto"]["vs_hf"] == pytest.approx(2.0)
    assert m["vllm-ngram"]["vs_vllm_ngram"] == pytest.approx(1.0)
    assert m["auto"]["tokens_per_pass"] == pytest.approx(2.0)
    assert m["vllm-ngram"]["tokens_per_pass"] == pytest.approx(12 / 9)  # N / (N - A)
    assert m["vllm-ngram"]["acceptance_length"] == pytest.approx(1 + 3 / 4)
    assert (m["auto"]["identical_to_hf"], m["auto"]["compared_to_hf"], m["auto"]["first_difference"]) == (2, 2, {})
    assert (m["vllm-ngram"]["identical_to_hf"], m["vllm-ngram"]["first_difference"]) == (1, {"1": 2})
    assert "identical_to_hf" not in m["hf"]
    cat = s["categories"]
    assert cat["qa"]["tokens_per_s"]["vllm-ngram"] == pytest.approx(16.0)
    assert cat["qa"]["vs_vllm_ngram"]["auto"] == pytest.approx(20.0 / 16.0)
    assert cat["rag"]["vs_vllm_ngram"]["auto"] == pytest.approx(20.0 / 8.0)


def test_summary_without_the_peer_has_no_peer_ratio():
    s = vllm_peer.summarize([r for r in _records() if r["method"] != "vllm-ngram"], ["hf", "auto"])
    assert s["methods"]["auto"]["vs_vllm_ngram"] is None
    assert s["methods"]["auto"]["vs_hf"] == pytest.approx(2.0)


def test_first_difference_of_a_shorter_output_is_its_length():
    rows = [{"prompt": 0, "category": "qa", "method": "hf", "tokens": [1, 2, 3], "wall_s": 1.0, "passes": 3},
            {"prompt": 0, "category": "qa", "method": "auto", "tokens": [1, 2], "wall_s": 1.0, "passes": 2}]
    assert vllm_peer.summarize(rows, ["hf", "auto"])["methods"]["auto"]["first_difference"] == {"0": 2}


def test_markdown_rows():
    report = {"model_name": "smollm2-135m", "chat": True, "n_prompts": 2, "max_new_tokens": 8, "settle_s": 0.25,
              "versions": {"vllm": "0.32.0"}, "load": {"start": 1.0, "end": 2.0, "min_1min": 1.0, "max_1min": 2.0},
              "threads": {"cpus": "0,1", "threads": 2, "torch_threads": 2, "vllm_torch_threads": 2},
              "summary": vllm_peer.summarize(_records(), METHODS), "notes": ["a note"]}
    text = vllm_peer.markdown(report)
    assert "| `auto` | 20.00 | 2.08x | 2.00x | 2.00 | 2/2 |" in text
    assert "| `hf` | 10.00 | 1.04x | 1.00x | 1.00 | (reference) |" in text
    assert "| `vllm-ngram` | 9.60 | 1.00x | 0.96x | 1.33 | 1/2 |" in text
    assert "| qa | 1 | 10.00 | 20.00 | 16.00 | 0.62x | 1.25x |" in text
    assert "2 drafting steps" not in text and "4 drafting steps, 16 draft tokens, 3 accepted" in text
    assert text.rstrip().endswith("a note")
