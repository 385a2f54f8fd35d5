"""Recipe: the ``code`` datastores (Python stdlib sources + MBPP training solutions, held-out tasks removed).

    python datastores/code_store.py [--model smollm2-135m] [--kind sam|rest|dense] [--no-stdlib]
        ->  datastores/code-<model>/ (sam), code-<kind>-<model>/; with --no-stdlib: mbpp-<model>/, mbpp-<kind>-<model>/

Corpus: every ``*.py`` file of this interpreter's standard library (``sysconfig.get_paths()['stdlib']``, without
``site-packages``), then the MBPP train tasks not held out by ``mbpp_split.py`` (fields ``text`` + ``code``, one
document per task). The held-out tasks are the code prompt set ``datastores/mbpp-heldout-prompts.jsonl``, written
by the same run, and the build also drops any document sharing a word 13-gram with those prompts.
``--no-stdlib`` keeps the MBPP part only (about 40k tokens: small enough for a ``dense`` build on a CPU).
"""
from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from _recipe import add_kind_args, builder_opts, store_suffix
from mbpp_split import DEFAULT_MBPP, split_mbpp

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kind_args(parser, default_max_tokens=None)
    parser.add_argument("--mbpp", default=str(DEFAULT_MBPP), help="MBPP train jsonl ('' to skip)")
    parser.add_argument("--no-stdlib", dest="stdlib", action="store_false", help="leave the standard library out")
    parser.add_argument("--out", default=None, help="output directory (default: see above)")
    args = parser.parse_args(argv)
    if not args.stdlib and not args.mbpp:
        parser.error("nothing to build: --no-stdlib and --mbpp ''")

    from draftless.hf.loading import load_tokenizer
    from draftless.stores.build import build_store

    tokenizer = load_tokenizer(args.model)
    corpus, exclude_overlap = [], None
    if args.stdlib:
        corpus.append(sysconfig.get_paths()["stdlib"])
    if args.mbpp:
        if not Path(args.mbpp).is_file():
            parser.error(f"MBPP file not found: {args.mbpp} (pass --mbpp PATH, or --mbpp '' to skip it)")
        exclude_overlap, heldin, n_out, n_in = split_mbpp(args.mbpp)
        print(f"[code] MBPP: {n_in} tasks in the corpus, {n_out} held out as prompts ({exclude_overlap})")
        corpus.append(heldin)
    name = ("code" if args.stdlib else "mbpp") + store_suffix(args.kind) + f"-{Path(args.model).stem}"
    build_store(args.kind, corpus, tokenizer, args.out or HERE / name, fields=["text", "code"], glob="*.py",
                exclude=["site-packages"], exclude_overlap=exclude_overlap,
                provenance={"mbpp_source": args.mbpp or None}, **builder_opts(args))


if __name__ == "__main__":
    main()
