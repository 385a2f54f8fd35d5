"""Recipe: retrieval datastores over GSM8K train (``rest`` suffix array or ``dense`` hidden-state index).

    python datastores/retrieval.py --kind rest  [--model smollm2-135m]            ->  datastores/math-rest-<model>/
    python datastores/retrieval.py --kind dense [--model smollm2-135m] [--max-tokens N] [--dim 96] [--index ivf]
                                                                                   ->  datastores/math-dense-<model>/

Corpus: ``gsm8k_train.jsonl`` (fields ``question`` + ``answer``, one document per problem), optionally without the
documents that share a word 13-gram with an evaluation prompt file (``--exclude-overlap FILE.jsonl``).

``dense`` runs the target model over the corpus (about 300 tokens/s on one CPU core for the 135M model, so the
default indexes the first 300k tokens; ``--max-tokens 0`` indexes everything: plan ~1.4M tokens / throughput).
"""
from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_GSM8K = HERE.parent.parent / "shared" / "bench" / "gsm8k_train.jsonl"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["rest", "dense"], default="rest")
    parser.add_argument("--model", default="smollm2-135m", help="target model (its tokenizer; dense: its states)")
    parser.add_argument("--gsm8k", default=str(DEFAULT_GSM8K), help="GSM8K train jsonl")
    parser.add_argument("--out", default=None, help="output directory (default: datastores/math-<kind>-<model>)")
    parser.add_argument("--exclude-overlap", default=None, metavar="FILE.jsonl",
                        help="drop documents sharing a word 13-gram with these Spec-Bench prompts")
    parser.add_argument("--max-tokens", type=int, default=300_000,
                        help="dense: index at most this many tokens (0: all)")
    parser.add_argument("--dim", type=int, default=96, help="dense: PCA dimension")
    parser.add_argument("--index", default="ivf", choices=["hnsw", "ivf", "flat"], help="dense: FAISS index type")
    parser.add_argument("--window", type=int, default=256, help="dense: tokens per model window")
    parser.add_argument("--batch-size", type=int, default=4, help="dense: windows per forward pass")
    args = parser.parse_args(argv)
    if not Path(args.gsm8k).is_file():
        parser.error(f"GSM8K file not found: {args.gsm8k} (pass --gsm8k PATH)")

    from draftless.build import build_store
    from draftless.models import load_tokenizer

    name = Path(args.model).stem
    out = args.out or HERE / f"math-{args.kind}-{name}"
    tokenizer = load_tokenizer(args.model)
    opts = {}
    if args.kind == "dense":  # the builder loads the model by name (so build_args records the name)
        opts = dict(model=args.model, dim=args.dim, index=args.index, window=args.window,
                    batch_size=args.batch_size, max_tokens=args.max_tokens or None)
    build_store(args.kind, [args.gsm8k], tokenizer, out, fields=["question", "answer"],
                exclude_overlap=args.exclude_overlap, **opts)


if __name__ == "__main__":
    main()
