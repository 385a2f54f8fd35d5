"""Recipe: the ``code`` datastore (Python stdlib sources + MBPP training solutions).

    python datastores/code.py [--model smollm2-135m] [--kind sam]   ->  datastores/code-<model>/

Corpus: every ``*.py`` file of this interpreter's standard library (``sysconfig.get_paths()['stdlib']``, without
``site-packages``), then ``mbpp_train.jsonl`` (fields ``text`` + ``code``, one document per task).
"""
from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MBPP = HERE.parent.parent / "shared" / "bench" / "mbpp_train.jsonl"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model whose tokenizer the store is built for")
    parser.add_argument("--kind", default="sam", help="datastore kind (default: sam)")
    parser.add_argument("--mbpp", default=str(DEFAULT_MBPP), help="MBPP train jsonl ('' to skip)")
    parser.add_argument("--out", default=None, help="output directory (default: datastores/code-<model>)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from draftless.build import build_store
    from draftless.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(args.model)))
    corpus = [sysconfig.get_paths()["stdlib"]]
    if args.mbpp:
        if not Path(args.mbpp).is_file():
            parser.error(f"MBPP file not found: {args.mbpp} (pass --mbpp PATH, or --mbpp '' to skip it)")
        corpus.append(args.mbpp)
    out = args.out or HERE / f"code-{Path(args.model).stem}"
    build_store(args.kind, corpus, tokenizer, out, fields=["text", "code"], glob="*.py", exclude=["site-packages"])


if __name__ == "__main__":
    main()
