"""xgrammar's transformers processor (``xgrammar.contrib.hf.LogitsProcessor``), as draftless meets it.

That processor keeps one matcher per batch row and advances each by the last token of every call, so it needs its
calls in decoding order, one token apart. draftless' acceptance walk gives a single row exactly that order (the
nodes it scores are the tokens it commits), so one row is served as ``model.generate`` serves it; the rows of a
batch decode at their own pace, which would interleave them, so a batch with this processor is refused.

For drafting, ``XGrammar`` wraps the processor's compiled grammar with the ``Matcher`` interface that the grammar
drafter reads (``XGrammarMatcher``: xgrammar's ``GrammarMatcher`` with rollback). Nothing here imports xgrammar
before a caller has: the processor is recognised by its type's module and name.
"""
from __future__ import annotations

import numpy as np

from .matcher import Matcher

PROCESSOR = ("xgrammar.contrib.hf", "LogitsProcessor")


def is_xgrammar_processor(proc) -> bool:
    cls = type(proc)
    return (cls.__module__, cls.__name__) == PROCESSOR


def check_rows(processors, batch: int) -> None:
    """Refuse, before any work, a batch of more than one row with xgrammar's processor (see the module
    docstring)."""
    if batch > 1 and any(is_xgrammar_processor(p) for p in processors or ()):
        raise ValueError(
            "xgrammar's LogitsProcessor advances each row's matcher by one token per call, in step with the other "
            "rows; draftless decodes a batch's rows at their own pace, so the calls would interleave rows: pass one "
            "row per generate call, or use draftless.grammar.GrammarLogitsProcessor (it follows any call order)")


class XGrammar:
    """The grammar of an xgrammar processor (its first compiled grammar), with the ``Grammar`` members drafters
    read: ``matcher()``, ``text`` (a key for what is learned per grammar), ``vocab_size``."""

    kind = "xgrammar"

    def __init__(self, compiled):
        self.compiled = compiled
        self.text = f"xgrammar:{id(compiled)}"
        self.vocab_size = int(compiled.tokenizer_info.vocab_size)

    def matcher(self) -> XGrammarMatcher:
        return XGrammarMatcher(self)

    def __repr__(self) -> str:
        return "XGrammar(compiled grammar of an xgrammar processor)"


def grammar_of(proc) -> XGrammar | None:
    """The grammar an xgrammar processor enforces (None for other processors)."""
    if not is_xgrammar_processor(proc):
        return None
    return XGrammar(proc.compiled_grammars[0])


class XGrammarMatcher(Matcher):
    """``Matcher`` over xgrammar's ``GrammarMatcher``."""

    def __init__(self, grammar: XGrammar):  # noqa: D107 - the base class's llguidance setup does not apply
        import xgrammar

        self.grammar = grammar
        self._xgr = xgrammar
        self._matcher = xgrammar.GrammarMatcher(grammar.compiled)
        self._bitmask = xgrammar.allocate_token_bitmask(1, grammar.vocab_size)
        self.vocab_size = grammar.vocab_size
        self.eos_ids = frozenset(int(t) for t in self._matcher.stop_token_ids)
        self.tokens: list[int] = []
        self._allowed_cache: dict[tuple, np.ndarray | None] = {}

    def can_take(self, token: int) -> bool:
        if not self._matcher.accept_token(int(token)):
            return False
        self._matcher.rollback(1)
        return True

    def push(self, token: int) -> bool:
        if not self._matcher.accept_token(int(token)):
            return False
        self.tokens.append(int(token))
        return True

    def pop(self, n: int = 1) -> None:
        if n:
            if n > len(self.tokens):
                raise RuntimeError(f"cannot roll back {n} of {len(self.tokens)} tokens")
            self._matcher.rollback(n)
            del self.tokens[-n:]

    def bitmask_words(self) -> np.ndarray:
        if self._matcher.is_terminated():
            return np.zeros(self._bitmask.shape[1], dtype=np.uint32)
        self._matcher.fill_next_token_bitmask(self._bitmask, 0)
        return self._bitmask[0].numpy().view(np.uint32)

    def forced_ids(self) -> list[int]:
        return []  # xgrammar's jump-forward is a string, not tokens; branches favour remembered choices instead

    def is_accepting(self) -> bool:
        return bool(self._matcher.is_completed())
