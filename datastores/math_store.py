"""Recipe: the ``math`` datastores over GSM8K train (``sam`` automaton, ``rest`` suffix array, ``dense`` index).

    python datastores/math_store.py [--model smollm2-135m] [--kind sam|rest|dense]
        ->  datastores/math-<model>/ (sam), datastores/math-rest-<model>/, datastores/math-dense-<model>/

Corpus: ``gsm8k_train.jsonl`` (fields ``question`` + ``answer``, one document per problem), optionally without the
documents that share a word 13-gram with an evaluation prompt file (``--exclude-overlap FILE.jsonl``).
GSM8K's answers carry tooling artefacts no model writes: calculator annotations (``48/2 = <<48/2=24>>24``) and a
final ``#### 72`` line. By default they are removed (``48/2 = 24``; a cleaned copy is written to
``datastores/gsm8k-train-clean.jsonl``) so the store holds text in the form a model generates;
``--keep-annotations`` indexes the file as is.

``dense`` runs the target model over the corpus (about 300 tokens/s on one CPU core for the 135M model and
about 100 for Gemma 3 270M), so it indexes the first 300k tokens by default; ``--max-tokens 0`` indexes all 1.4M.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from _recipe import add_kind_args, builder_opts, store_suffix

from draftless.paths import bench_data_dir

HERE = Path(__file__).resolve().parent
DEFAULT_GSM8K = bench_data_dir() / "gsm8k_train.jsonl"
CLEAN_PATH = HERE / "gsm8k-train-clean.jsonl"
ANNOTATION = re.compile(r"<<[^<>]*>>")
FINAL_ANSWER = re.compile(r"\n?#### [^\n]*\s*$")


def clean_answer(answer: str) -> str:
    """``"48/2 = <<48/2=24>>24 clips.\\n#### 72"`` -> ``"48/2 = 24 clips."``."""
    return FINAL_ANSWER.sub("", ANNOTATION.sub("", answer)).rstrip()


def write_clean_copy(source: str | Path, out: Path = CLEAN_PATH) -> Path:
    from draftless.atomic import atomic_file

    with open(source, encoding="utf-8") as src, atomic_file(out, "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip():
                record = json.loads(line)
                record["answer"] = clean_answer(record["answer"])
                dst.write(json.dumps(record) + "\n")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kind_args(parser, default_max_tokens=300_000)
    parser.add_argument("--gsm8k", default=str(DEFAULT_GSM8K), help="GSM8K train jsonl")
    parser.add_argument("--out", default=None, help="output directory (default: see above)")
    parser.add_argument("--exclude-overlap", default=None, metavar="FILE.jsonl",
                        help="drop documents sharing a word 13-gram with these Spec-Bench prompts")
    parser.add_argument("--keep-annotations", action="store_true",
                        help="index GSM8K's <<calculator>> annotations and '#### N' lines as they are")
    args = parser.parse_args(argv)
    if not Path(args.gsm8k).is_file():
        parser.error(f"GSM8K file not found: {args.gsm8k} (pass --gsm8k PATH)")

    from draftless.hf.loading import load_tokenizer
    from draftless.stores.build import build_store

    out = args.out or HERE / f"math{store_suffix(args.kind)}-{Path(args.model).stem}"
    corpus = args.gsm8k if args.keep_annotations else write_clean_copy(args.gsm8k)
    build_store(args.kind, [corpus], load_tokenizer(args.model), out, fields=["question", "answer"],
                exclude_overlap=args.exclude_overlap, provenance={"gsm8k_source": args.gsm8k,
                                                                  "annotations_removed": not args.keep_annotations},
                **builder_opts(args))


if __name__ == "__main__":
    main()
