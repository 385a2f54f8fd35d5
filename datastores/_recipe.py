"""Options the recipes share: the store kind and the dense builder's knobs."""
from __future__ import annotations

import argparse


def add_kind_args(parser: argparse.ArgumentParser, default_max_tokens: int | None) -> None:
    from draftless.index.dense_index import INDEX_TYPES
    from draftless.stores.kinds import STORE_KINDS

    parser.add_argument("--kind", choices=STORE_KINDS, default="sam", help="datastore kind")
    parser.add_argument("--model", default="smollm2-135m", help="target model (its tokenizer; dense: its states)")
    parser.add_argument("--max-tokens", type=int, default=default_max_tokens,
                        help="dense: index at most this many corpus tokens (0 or omitted: all)")
    parser.add_argument("--dim", type=int, default=96, help="dense: PCA dimension")
    parser.add_argument("--index", default="ivf", choices=INDEX_TYPES, help="dense: FAISS index type")
    parser.add_argument("--window", type=int, default=256, help="dense: tokens per model window")
    parser.add_argument("--batch-size", type=int, default=4, help="dense: windows per forward pass")


def store_suffix(kind: str) -> str:
    """``math-<model>`` for a sam store, ``math-rest-<model>`` / ``math-dense-<model>`` for the others."""
    return "" if kind == "sam" else f"-{kind}"


def builder_opts(args: argparse.Namespace) -> dict:
    """Keyword options for ``build_store``: the dense builder loads the model by name (recorded in build_args)."""
    if args.kind != "dense":
        return {}
    return dict(model=args.model, dim=args.dim, index=args.index, window=args.window, batch_size=args.batch_size,
                max_tokens=args.max_tokens or None)
