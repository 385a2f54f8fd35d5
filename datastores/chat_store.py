"""Recipe: the ``chat`` datastore, self-distilled: the target model's own answers to the self-instruct seed tasks.

    python datastores/chat_store.py [--model smollm2-135m] [--max-new-tokens 192]   ->  datastores/chat-<model>/

The model answers each of the 175 seed tasks (instruction + first instance input; chat template when the tokenizer
has one) greedily through draftless itself (``auto`` drafter, output identical to plain decoding), the answers are
written to ``datastores/chat-<model>.answers.jsonl``, and a ``sam`` store is built from them. The seed tasks
overlap none of the Spec-Bench prompts. Generation time is printed and recorded in the store's build arguments.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from draftless.paths import bench_data_dir

HERE = Path(__file__).resolve().parent
DEFAULT_TASKS = bench_data_dir() / "self_instruct_seed_tasks.jsonl"


def task_prompt(task: dict) -> str:
    instances = task.get("instances") or [{}]
    extra = (instances[0].get("input") or "").strip()
    return task["instruction"].strip() + (f"\n\n{extra}" if extra else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="the target model (answers and tokenizer)")
    parser.add_argument("--tasks", default=str(DEFAULT_TASKS), help="self-instruct seed tasks jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N tasks")
    parser.add_argument("--out", default=None, help="output directory (default: datastores/chat-<model>)")
    args = parser.parse_args(argv)
    if not Path(args.tasks).is_file():
        parser.error(f"tasks file not found: {args.tasks}")

    from tqdm import tqdm

    import draftless
    from draftless.app.prompts import encode_prompt
    from draftless.atomic import atomic_file
    from draftless.hf.loading import load_model
    from draftless.stores.build import build_store

    model, tokenizer = load_model(args.model)
    chat = bool(getattr(tokenizer, "chat_template", None))
    tasks = [json.loads(line) for line in open(args.tasks, encoding="utf-8") if line.strip()][: args.limit]
    name = Path(args.model).stem
    answers_path = HERE / f"chat-{name}.answers.jsonl"
    fast = draftless.accelerate(model, drafter="auto", tokenizer=tokenizer)
    t0 = time.perf_counter()
    new_tokens = 0
    with atomic_file(answers_path, "w", encoding="utf-8") as fh:
        for task in tqdm(tasks, desc="self-distilling", unit="task"):
            ids = encode_prompt(tokenizer, task_prompt(task), chat)
            out = fast.generate(ids, max_new_tokens=args.max_new_tokens)
            new_tokens += len(out.new_tokens)
            answer = tokenizer.decode(out.new_tokens, skip_special_tokens=True)
            fh.write(json.dumps({"id": task.get("id"), "prompt": task_prompt(task), "answer": answer}) + "\n")
    gen_s = time.perf_counter() - t0
    print(f"[chat] {len(tasks)} answers, {new_tokens} tokens generated in {gen_s:.0f} s "
          f"({new_tokens / gen_s:.1f} tok/s) -> {answers_path}")
    out_dir = args.out or HERE / f"chat-{name}"
    build_store("sam", [str(answers_path)], tokenizer, out_dir, fields=["answer"],
                provenance={"distilled_from": args.tasks, "generation_seconds": round(gen_s, 1),
                            "generated_tokens": new_tokens, "max_new_tokens": args.max_new_tokens})


if __name__ == "__main__":
    main()
