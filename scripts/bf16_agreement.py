"""How often half-precision greedy output differs from ``model.generate``'s, set against how often
``model.generate`` differs from itself under an equally harmless change.

In bf16 a pass over a tree of n tokens and a pass over one token sum their products in another order, so greedy
identity with ``model.generate`` cannot be promised (fp32 keeps it: the rounding there stays below every margin the
models produce). This measures, per prompt, whether ``auto``'s greedy output equals plain ``model.generate``'s in
the same dtype, and, as the yardstick, whether ``model.generate`` on a batch of two equal rows equals
``model.generate`` on the row alone (the batched matrix products round differently in the same way).

    OMP_NUM_THREADS=1 python scripts/bf16_agreement.py --models smollm2-135m --per-category 1 \
        --json bench-results/bf16-agreement.json
    OMP_NUM_THREADS=1 python scripts/bf16_agreement.py --models gemma3-270m --per-category 1 \
        --json bench-results/bf16-agreement.json --update

Output JSON: ``{"dtype", "torch", "models": {name: {"max_new_tokens", "prompts_file", "n_prompts",
"draftless_identical", "batch_of_two_identical", "draftless_mean_agreeing_prefix",
"batch_of_two_mean_agreeing_prefix", "prompts": [...]}}}``
where an agreeing prefix is the share of new tokens before the first difference (1.0 when identical).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import draftless
from draftless.app.prompts import encode_prompt, load_prompt_file
from draftless.atomic import atomic_file
from draftless.models import load_model
from draftless.paths import bench_data_dir

MODELS = {"smollm2-135m": True, "gemma3-270m": False}  # name -> chat template


def agreeing_prefix(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of ``a``'s tokens (int64 [N]) before the first position where ``b`` differs (1.0 when equal)."""
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    first = int(diff[0]) if len(diff) else n
    return first / max(len(a), 1)


def measure_model(name: str, chat: bool, dtype: torch.dtype, prompts, max_new_tokens: int) -> dict:
    model, tokenizer = load_model(name, dtype=dtype)
    greedy = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id
              if tokenizer.pad_token_id is not None else tokenizer.eos_token_id}
    rows = []
    for prompt in tqdm(prompts, desc=f"{name} {str(dtype).removeprefix('torch.')}", file=sys.stderr):
        ids = encode_prompt(tokenizer, prompt.text, chat)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            plain = model.generate(ids, attention_mask=mask, **greedy)[0, ids.shape[1]:]
            pair = model.generate(ids.repeat(2, 1), attention_mask=mask.repeat(2, 1), **greedy)[0, ids.shape[1]:]
            fast = model.generate(ids, attention_mask=mask, custom_generate=draftless.custom_generate,
                                  drafter="auto", **greedy)[0, ids.shape[1]:]
        rows.append({"question_id": prompt.question_id, "category": prompt.category, "new_tokens": len(plain),
                     "draftless_identical": bool(torch.equal(fast, plain)),
                     "batch_of_two_identical": bool(torch.equal(pair, plain)),
                     "draftless_agreeing_prefix": agreeing_prefix(plain, fast),
                     "batch_of_two_agreeing_prefix": agreeing_prefix(plain, pair)})
    draftless.custom_generate.release(model)
    n = len(rows)
    return {"n_prompts": n, "chat": chat,
            "draftless_identical": sum(r["draftless_identical"] for r in rows) / n,
            "batch_of_two_identical": sum(r["batch_of_two_identical"] for r in rows) / n,
            "draftless_mean_agreeing_prefix": sum(r["draftless_agreeing_prefix"] for r in rows) / n,
            "batch_of_two_mean_agreeing_prefix": sum(r["batch_of_two_agreeing_prefix"] for r in rows) / n,
            "prompts": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default=str(bench_data_dir() / "spec_bench_dev.jsonl"))
    parser.add_argument("--per-category", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts (categories round-robin)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated shipped model names")
    parser.add_argument("--json", required=True, help="where to write the report")
    parser.add_argument("--update", action="store_true",
                        help="keep the other models of an existing report at --json, replacing only those measured")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    prompts = load_prompt_file(args.prompts, per_category=args.per_category, limit=args.limit)
    report = {"dtype": args.dtype, "torch": torch.__version__, "models": {}}
    if args.update and Path(args.json).exists():
        report = json.loads(Path(args.json).read_text())
        if report.get("dtype") != args.dtype:
            parser.error(f"{args.json} holds a {report.get('dtype')} report; --update needs the same --dtype")
    for name in args.models.split(","):
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        report["models"][name] = {"max_new_tokens": args.max_new_tokens, "prompts_file": Path(args.prompts).name,
                                  "per_category": args.per_category, "limit": args.limit,
                                  **measure_model(name, MODELS[name], dtype, prompts, args.max_new_tokens)}
        summary = {k: v for k, v in report["models"][name].items() if k != "prompts"}
        print(name, json.dumps(summary), file=sys.stderr)
    with atomic_file(args.json) as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
