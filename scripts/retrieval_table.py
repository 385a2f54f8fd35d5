"""Merge several ``draftless bench`` reports into one table: one row per method family, one column group per report.

    python scripts/retrieval_table.py bench-results/smollm2-chat-math-retrieval.json \\
        bench-results/gemma3-raw-math-retrieval.json ... > table.md

A method's family is its spec with the datastore directory's corpus kept and the model suffix dropped
(``sam:datastores/math-smollm2-135m`` and ``sam:datastores/math-gemma3-270m`` are both ``sam:math``), so the same
store recipe lines up across models. Each cell is ``speedup / mean accepted tokens per pass`` (``-`` when the
report lacks the method; ``(differs)`` flags an output not identical to ``hf``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def family(method: str, model: str) -> str:
    kind, _, arg = method.partition(":")
    if not arg:
        return method
    name = Path(arg.rstrip("/")).name
    suffix = "-" + model
    if name.endswith(suffix):
        name = name[: -len(suffix)]
    return f"{kind}:{name.replace('-' + kind, '')}"


def column_title(report: dict, path: Path) -> str:
    style = "chat" if report.get("chat") else "raw"
    label = path.stem.split("-")[-2] if "-" in path.stem else path.stem
    return f"{report['model']} {style}, {label} ({report['n_prompts']} prompts)"


def merged_table(paths: list[Path]) -> str:
    reports = [(p, json.loads(p.read_text())) for p in paths]
    rows: dict[str, dict[int, str]] = {}
    for col, (_path, report) in enumerate(reports):
        for method, m in report["methods"].items():
            cell = f"{m['speedup_vs_hf']:.2f}x / {m['mean_accepted']:.2f}"
            if not m.get("identical_to_hf", True):
                cell += " (differs)"
            rows.setdefault(family(method, report["model"]), {})[col] = cell
    header = "| method | " + " | ".join(column_title(r, p) for p, r in reports) + " |"
    lines = [header, "|---" * (len(reports) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| `{name}` | " + " | ".join(cells.get(c, "-") for c in range(len(reports))) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="bench JSON reports")
    print(merged_table(parser.parse_args(argv).reports))


if __name__ == "__main__":
    main()
