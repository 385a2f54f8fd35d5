"""Recipe: the ``math`` datastore (GSM8K training questions and worked answers).

    python datastores/math.py [--model smollm2-135m] [--kind sam]   ->  datastores/math-<model>/

Corpus: ``gsm8k_train.jsonl`` (fields ``question`` + ``answer``, one document per problem).
"""
from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_GSM8K = HERE.parent.parent / "shared" / "bench" / "gsm8k_train.jsonl"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model whose tokenizer the store is built for")
    parser.add_argument("--kind", default="sam", help="datastore kind (default: sam)")
    parser.add_argument("--gsm8k", default=str(DEFAULT_GSM8K), help="GSM8K train jsonl")
    parser.add_argument("--out", default=None, help="output directory (default: datastores/math-<model>)")
    args = parser.parse_args(argv)
    if not Path(args.gsm8k).is_file():
        parser.error(f"GSM8K file not found: {args.gsm8k} (pass --gsm8k PATH)")

    from transformers import AutoTokenizer

    from draftless.build import build_store
    from draftless.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(args.model)))
    out = args.out or HERE / f"math-{Path(args.model).stem}"
    build_store(args.kind, [args.gsm8k], tokenizer, out, fields=["question", "answer"])


if __name__ == "__main__":
    main()
