"""CLI smoke tests on a tiny model saved as a local HF folder with a word-level tokenizer."""
import json

import pytest
from conftest import WORDS

from draftless.app.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Measured cost curves of the throwaway models (and anything converted) go to temporary directories."""
    monkeypatch.setenv("DRAFTLESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DRAFTLESS_STATE_DIR", str(tmp_path / "state"))


def test_generate_prints_text_stats_and_speedup(tiny_folder, capsys):
    prompt = " ".join(WORDS[:6] * 3)
    code = main(["generate", "--model", str(tiny_folder), "--prompt", prompt, "--raw", "--drafter", "ngram",
                 "--max-new-tokens", "12", "--compare"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[draftless] drafter=ngram" in out and "tokens/step" in out
    assert "output identical: True" in out


def test_generate_with_chat_template_and_sampling(tiny_folder, capsys):
    code = main(["generate", "--model", str(tiny_folder), "--prompt", "w1 w2 w3", "--chat", "--drafter",
                 "ngram+recycle", "--max-new-tokens", "6", "--temperature", "0.8", "--top-k", "10"])
    assert code == 0
    assert "6 tokens in" in capsys.readouterr().out


def test_bench_writes_report_with_contract_keys(tiny_folder, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [{"question_id": i, "category": cat, "turns": [" ".join(WORDS[i:i + 5] * 3)]}
            for i, cat in enumerate(["qa", "qa", "code", "code", "math"])]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    out_json = tmp_path / "r.json"
    code = main(["bench", "--model", str(tiny_folder), "--prompts", str(prompts), "--methods", "hf,hf-pld,ngram",
                 "--max-new-tokens", "10", "--per-category", "1", "--json", str(out_json),
                 "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")])
    assert code == 0
    report = json.loads(out_json.read_text())
    assert {"model", "device", "dtype", "max_new_tokens", "n_prompts", "methods"} <= set(report)
    assert report["n_prompts"] == 3 and set(report["methods"]) == {"hf", "hf-pld", "ngram"}
    for _name, m in report["methods"].items():
        assert {"tokens_per_s", "wall_s", "new_tokens", "mean_accepted", "speedup_vs_hf", "identical_to_hf",
                "per_category"} <= set(m)
        assert set(m["per_category"]) == {"qa", "code", "math"}
        assert m["identical_to_hf"] is True
    assert report["methods"]["hf"]["mean_accepted"] == pytest.approx(1.0)
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "| `ngram` |" in (tmp_path / "r.md").read_text()


def test_errors_are_clear(tiny_folder, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_folder), "--prompt", "  ", "--raw"]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_folder), "--prompt", "w1", "--drafter", "bogus"]) == 2
    assert "unknown drafter kind" in capsys.readouterr().err


def test_grammar_flags_fail_clearly(tiny_folder, tmp_path, capsys):
    pytest.importorskip("llguidance")
    bad = tmp_path / "schema.json"
    bad.write_text("{not json")
    assert main(["generate", "--model", str(tiny_folder), "--prompt", "w1", "--json-schema", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_folder), "--prompt", "w1", "--json-schema",
                 str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    # the tiny folder's word-level vocabulary has no byte decoder: named, with the way around it
    assert main(["generate", "--model", str(tiny_folder), "--prompt", "w1", "--regex", "(w1|w2)+"]) == 2
    assert "from_token_bytes" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_folder), "--prompts", str(bad), "--json", str(tmp_path / "r.json"),
                 "--structured", "tool-call", "--regex", "x"]) == 2


@pytest.mark.parametrize("kind", ["sam", "rest"])
def test_build_store_with_decontamination(tiny_folder, tmp_path, kind):
    corpus = tmp_path / "corpus.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    leaked = " ".join(WORDS[:14])
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in [leaked, " ".join(WORDS[20:40]), "w1 w2 w3"]))
    prompts.write_text(json.dumps({"question_id": 1, "category": "qa", "turns": [leaked]}))
    out = tmp_path / "store"
    assert main(["build", "--kind", kind, "--corpus", str(corpus), "--field", "text", "--model", str(tiny_folder),
                 "--out", str(out), "--exclude-overlap", str(prompts)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == kind
    assert meta["decontamination"]["n_excluded"] == 1 and meta["n_documents"] == 2
