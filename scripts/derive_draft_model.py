"""Save a draft model derived from a target without training: its first N layers plus its norm and head.

    python scripts/derive_draft_model.py --model smollm2-135m --layers 8 --out ~/.cache/draftless/drafts/smollm2-l8
    draftless generate --model smollm2-135m --drafter model:~/.cache/draftless/drafts/smollm2-l8 --compare
"""
from __future__ import annotations

import argparse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="the target (shipped name, HF folder or .gguf)")
    parser.add_argument("--layers", type=int, required=True, help="how many of the first decoder layers to keep")
    parser.add_argument("--out", required=True, help="output HF folder (must not exist)")
    args = parser.parse_args(argv)

    from draftless.hf.derive import save_shallow_model
    from draftless.hf.loading import load_model

    model, tokenizer = load_model(args.model)
    out = save_shallow_model(model, tokenizer, args.layers, args.out)
    print(f"[derive] first {args.layers} layers of {args.model} -> {out}")


if __name__ == "__main__":
    main()
