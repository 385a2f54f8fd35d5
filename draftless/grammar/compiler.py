"""Compile grammars against one vocabulary: a ``GrammarCompiler`` per tokenizer (building its token table takes
0.5-5 s on a real vocabulary, so keep one), a ``Grammar`` per schema, regex or Lark text."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .llg import llguidance as _llguidance
from .matcher import Matcher


class GrammarCompiler:
    """Compiles grammars for one vocabulary. Build it from a fast Hugging Face tokenizer (``GrammarCompiler(tok)``)
    or from the bytes of every token (``GrammarCompiler.from_token_bytes``).

    ``vocab_size``: the model's logits width when it differs from the tokenizer's (ids past the tokenizer's table
    are then never allowed); ``eos_token_id``: the id(s) that end the output, admitted once the grammar is complete
    (default: the tokenizer's EOS; pass the model's when its generation config stops on another, as chat models
    often do)."""

    def __init__(self, tokenizer, vocab_size: int | None = None, eos_token_id: int | list[int] | None = None):
        llg = _llguidance()
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"grammars need a fast (Rust) tokenizer; got {type(tokenizer).__name__}")
        try:
            self._tokenizer = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos_token_id)
        except ValueError as err:  # e.g. a word-level vocabulary with no byte decoder
            raise ValueError(f"llguidance cannot read this tokenizer's vocabulary ({err}); give the bytes of each "
                             "token instead: GrammarCompiler.from_token_bytes(tokens, eos_token_id)") from err

    @classmethod
    def from_token_bytes(cls, tokens: list[bytes], eos_token_id: int) -> GrammarCompiler:
        """A compiler for a vocabulary given as the bytes each token id stands for (``tokens[i]``: bytes of id i;
        ``eos_token_id``: the id that ends a sequence, allowed once the grammar is complete)."""
        llg = _llguidance()
        table = [bytes(t) for t in tokens]
        by_bytes = {b: i for i, b in enumerate(table) if b and i != eos_token_id}
        longest = max(map(len, by_bytes), default=1)

        class _Table:  # what llguidance's TokenizerWrapper reads
            def __init__(self):
                self.tokens, self.eos_token_id, self.bos_token_id = table, int(eos_token_id), None
                self.special_token_ids = [int(eos_token_id)]

            def __call__(self, text):  # greedy longest match: only used to tokenize forced strings
                data = text if isinstance(text, bytes) else text.encode()
                out, at = [], 0
                while at < len(data):
                    for size in range(min(longest, len(data) - at), 0, -1):
                        if data[at: at + size] in by_bytes:
                            out.append(by_bytes[data[at: at + size]])
                            at += size
                            break
                    else:
                        raise ValueError(f"byte {data[at:at + 1]!r} has no token")
                return out

        compiler = cls.__new__(cls)
        compiler._tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_Table()))
        return compiler

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.vocab_size)

    def _compile(self, text: str, kind: str, source: str) -> Grammar:
        llg = _llguidance()
        failed, messages = llg.LLMatcher.validate_grammar_with_warnings(text, self._tokenizer)
        if failed:
            raise ValueError(f"invalid {kind}: {messages[0] if messages else 'rejected by llguidance'}")
        return Grammar(self, text, kind, source)

    def json_schema(self, schema: dict | str | Path, whitespace_flexible: bool = True) -> Grammar:
        """Output that is one JSON value matching ``schema`` (a dict, a JSON string, or a path to a .json file).
        ``whitespace_flexible=False``: compact JSON (no whitespace between tokens of the syntax), which makes
        more of the output forced; the default lets the model place whitespace as it likes."""
        if isinstance(schema, Path) or (isinstance(schema, str) and not schema.lstrip().startswith("{")):
            schema = Path(schema).read_text()
        if isinstance(schema, str):
            schema = json.loads(schema)
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema must be a JSON object, got {type(schema).__name__}")
        text = _llguidance().LLMatcher.grammar_from_json_schema(
            schema, overrides={"whitespace_flexible": bool(whitespace_flexible)})
        return self._compile(text, "JSON schema", json.dumps(schema))

    def regex(self, pattern: str) -> Grammar:
        """Output that matches the regular expression ``pattern`` in full."""
        return self._compile(_llguidance().LLMatcher.grammar_from_regex(pattern), "regex", pattern)

    def lark(self, grammar: str) -> Grammar:
        """Output derived from the ``start`` rule of a Lark grammar (llguidance's dialect)."""
        return self._compile(_llguidance().LLMatcher.grammar_from_lark(grammar), "Lark grammar", grammar)


@dataclass(frozen=True, eq=False)
class Grammar:
    """A compiled grammar bound to its compiler's vocabulary. ``kind``: "JSON schema", "regex" or "Lark grammar";
    ``source``: the text it was compiled from. ``matcher()`` gives a fresh matcher at the start of the output."""

    compiler: GrammarCompiler
    text: str
    kind: str
    source: str

    @property
    def vocab_size(self) -> int:
        return self.compiler.vocab_size

    def matcher(self) -> Matcher:
        return Matcher(self)

    def __repr__(self) -> str:
        short = self.source if len(self.source) <= 60 else self.source[:57] + "..."
        return f"Grammar({self.kind}: {short})"
