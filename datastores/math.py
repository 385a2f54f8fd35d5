"""Recipe: the ``math`` datastores over GSM8K train (``sam`` automaton, ``rest`` suffix array, ``dense`` index).

    python datastores/math.py [--model smollm2-135m] [--kind sam|rest|dense]
        ->  datastores/math-<model>/ (sam), datastores/math-rest-<model>/, datastores/math-dense-<model>/

Corpus: ``gsm8k_train.jsonl`` (fields ``question`` + ``answer``, one document per problem), optionally without the
documents that share a word 13-gram with an evaluation prompt file (``--exclude-overlap FILE.jsonl``).

``dense`` runs the target model over the corpus (about 300 tokens/s on one CPU core for the 135M model and
about 100 for Gemma 3 270M), so it indexes the first 300k tokens by default; ``--max-tokens 0`` indexes all 1.4M.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _recipe import add_kind_args, builder_opts, store_suffix

HERE = Path(__file__).resolve().parent
DEFAULT_GSM8K = HERE.parent.parent / "shared" / "bench" / "gsm8k_train.jsonl"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kind_args(parser, default_max_tokens=300_000)
    parser.add_argument("--gsm8k", default=str(DEFAULT_GSM8K), help="GSM8K train jsonl")
    parser.add_argument("--out", default=None, help="output directory (default: see above)")
    parser.add_argument("--exclude-overlap", default=None, metavar="FILE.jsonl",
                        help="drop documents sharing a word 13-gram with these Spec-Bench prompts")
    args = parser.parse_args(argv)
    if not Path(args.gsm8k).is_file():
        parser.error(f"GSM8K file not found: {args.gsm8k} (pass --gsm8k PATH)")

    from draftless.build import build_store
    from draftless.models import load_tokenizer

    out = args.out or HERE / f"math{store_suffix(args.kind)}-{Path(args.model).stem}"
    build_store(args.kind, [args.gsm8k], load_tokenizer(args.model), out, fields=["question", "answer"],
                exclude_overlap=args.exclude_overlap, **builder_opts(args))


if __name__ == "__main__":
    main()
