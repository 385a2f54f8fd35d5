"""Write a Spec-Bench style jsonl of long prompts for ``draftless bench --prompts``: each one the texts of ``--join``
consecutive dev-set prompts of one category, one after another (the documents of several RAG questions, several
articles to summarise), so the last prompt's request comes last and the context is thousands of tokens long.

    python scripts/long_prompts.py --join 4 --per-category 3 --out /tmp/long.jsonl
    draftless bench --model gemma3-270m --prompts /tmp/long.jsonl --methods hf,auto --json long.json

The texts are the dev set's (``draftless/data/bench/spec_bench_dev.jsonl``, see its SOURCES.md), taken from the end
of each category so they are not the prompts ``--per-category`` picks from the front of the dev set.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEV_SET = Path(__file__).resolve().parents[1] / "draftless" / "data" / "bench" / "spec_bench_dev.jsonl"


def long_prompts(rows: list[dict], categories: list[str], join: int, per_category: int) -> list[dict]:
    """Per category, ``per_category`` prompts, each the first turns of ``join`` consecutive rows of that category
    (from its last rows backwards) separated by blank lines."""
    if join < 1 or per_category < 1:
        raise ValueError(f"--join and --per-category must be >= 1, got {join} and {per_category}")
    out = []
    for category in categories:
        pool = [r for r in rows if r["category"] == category]
        if len(pool) < join * per_category:
            raise ValueError(f"category {category!r} has {len(pool)} prompts, fewer than --join x --per-category = "
                             f"{join * per_category}")
        pool = pool[len(pool) - join * per_category:]
        for i in range(per_category):
            group = pool[i * join:(i + 1) * join]
            out.append({"question_id": "+".join(str(r["question_id"]) for r in group), "category": category,
                        "turns": ["\n\n".join(r["turns"][0] for r in group)]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--join", type=int, default=4, help="dev-set prompts per long prompt")
    parser.add_argument("--per-category", type=int, default=3, help="long prompts per category")
    parser.add_argument("--categories", default="rag,summarization", help="comma-separated dev-set categories")
    parser.add_argument("--dev-set", type=Path, default=DEV_SET)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.dev_set.read_text().splitlines() if line.strip()]
    prompts = long_prompts(rows, args.categories.split(","), args.join, args.per_category)
    args.out.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {args.out}")


if __name__ == "__main__":
    main()
