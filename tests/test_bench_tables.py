"""The benchmark tables in README.md and docs/*.md are generated from bench-results/ by scripts/bench_tables.py:
a table that disagrees with its report, a region naming no known table, or a report nobody indexes fails here."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench_tables.py"


def _module():
    if "bench_tables" in sys.modules:
        return sys.modules["bench_tables"]
    spec = importlib.util.spec_from_file_location("bench_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tables"] = module  # dataclasses look their module up while the script is being executed
    spec.loader.exec_module(module)
    return module


def test_every_table_matches_its_report():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout


def test_regions_are_rewritten_and_unknown_ones_reported():
    bench_tables = _module()
    stale = ("intro\n<!-- table: vllm-step-costs -->\n| old |\n<!-- /table -->\n"
             "<!-- table: no-such-table -->\n<!-- /table -->\n")
    new, changed, problems = bench_tables.rewrite(stale)
    assert changed == ["vllm-step-costs"]
    assert problems == ["unknown table 'no-such-table'"]
    assert "| old |" not in new and new.startswith("intro\n<!-- table: vllm-step-costs -->\n| rows")
    assert bench_tables.rewrite(new)[1] == []  # rendering is deterministic: a second pass changes nothing


def test_every_report_is_read_or_indexed():
    bench_tables = _module()
    read = {s for t in bench_tables.TABLES.values() for s in t.sources}
    index = (REPO / "bench-results" / "README.md").read_text()
    for path in (REPO / "bench-results").iterdir():
        if path.name == "README.md":
            continue
        assert path.name in read or path.stem in index, f"bench-results/{path.name} is neither read by a table " \
                                                        "nor listed in bench-results/README.md"
    for name, t in bench_tables.TABLES.items():
        for source in t.sources:
            assert t.pending or (REPO / "bench-results" / source).is_file(), f"table {name!r} reads missing {source}"
