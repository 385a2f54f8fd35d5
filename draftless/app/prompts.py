"""Turning prompt text into model input: raw text or the tokenizer's chat template."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


def encode_prompt(tokenizer, text: str, chat: bool) -> torch.Tensor:
    """int64 [1, P] input ids for ``text``; with ``chat`` the user turn is wrapped by the chat template."""
    if not text or not text.strip():
        raise ValueError("the prompt is empty")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat needs a tokenizer with a chat template; this model has none (drop --chat)")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        if not torch.is_tensor(ids):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return ids.to(torch.long)
    return tokenizer(text, return_tensors="pt").input_ids.to(torch.long)


@dataclass(frozen=True)
class BenchPrompt:
    """A prompt of a benchmark: ``grammar_spec`` is what its output must match, or None: one of
    ``{"json_schema": dict}``, ``{"regex": str}``, ``{"lark": str}`` (``compile_grammar_spec``)."""

    question_id: str
    category: str
    text: str
    grammar_spec: dict | None = None


def compile_grammar_spec(compiler, spec: dict):
    """The ``draftless.grammar.Grammar`` a ``grammar_spec`` names, compiled by ``compiler`` (a
    ``GrammarCompiler``)."""
    (kind, value), = spec.items()
    if kind == "json_schema":
        return compiler.json_schema(value)
    if kind == "regex":
        return compiler.regex(value)
    if kind == "lark":
        return compiler.lark(value)
    raise ValueError(f"unknown grammar kind {kind!r}: json_schema, regex or lark")


def grammar_compiler_for(model, tokenizer):
    """A ``GrammarCompiler`` for ``model``'s vocabulary: its logits width, and its generation config's EOS ids
    (what ends the output once the grammar is complete)."""
    from ..grammar import GrammarCompiler

    eos = model.generation_config.eos_token_id
    vocab = int(model.get_output_embeddings().weight.shape[0])
    return GrammarCompiler(tokenizer, vocab_size=vocab, eos_token_id=eos)


def load_prompt_file(path: str | Path, per_category: int | None = None, limit: int | None = None) -> list[BenchPrompt]:
    """Spec-Bench style jsonl (``question_id``, ``category``, ``turns``): the first turn is the prompt.

    ``per_category`` keeps the first K prompts of each category (file order); ``limit`` then caps the total,
    taking categories round-robin so every category stays represented.
    """
    by_category: dict[str, list[BenchPrompt]] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                turns = row["turns"]
                text = turns[0] if isinstance(turns, list) else str(turns)
            except (ValueError, KeyError, IndexError) as exc:
                raise ValueError(f"{path}:{line_no}: not a Spec-Bench prompt line ({exc})") from exc
            category = str(row.get("category", "all"))
            by_category.setdefault(category, []).append(
                BenchPrompt(str(row.get("question_id", line_no)), category, text))
    if per_category is not None:
        by_category = {k: v[:per_category] for k, v in by_category.items()}
    ordered: list[BenchPrompt] = []
    queues = [list(v) for v in by_category.values()]
    while any(queues):
        for q in queues:
            if q:
                ordered.append(q.pop(0))
    if limit is not None:
        ordered = ordered[:limit]
    if not ordered:
        raise ValueError(f"no prompts in {path}")
    return ordered
