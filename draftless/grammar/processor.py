"""The logits processor that enforces a grammar, for ``model.generate`` and draftless alike.

It keeps one ``Matcher`` per batch row and, on every call, moves it to the row's output so far (``Matcher.sync``:
roll back to the common prefix, consume the rest), so it returns the same scores for the same ``input_ids``
whatever order calls come in: draftless' acceptance walk calls it on tree nodes, and a rejected branch leaves
nothing behind. The row's output starts after the ``input_ids`` of the first call (the prompt, padding included).
One processor serves one ``generate`` call, as transformers' own stateful processors do."""
from __future__ import annotations

import time

import numpy as np
import torch

from .matcher import GrammarViolation, Matcher
from .xgrammar_bridge import grammar_of

# up to this many allowed ids, scores are copied id by id; past it, through a full mask
FEW_IDS = 256


class GrammarLogitsProcessor:
    """Restrict each row's next token to what ``grammar`` (a ``draftless.grammar.Grammar``) admits: scores of
    other tokens become ``-inf``. Call it as transformers calls processors: ``(input_ids int64 [B, L],
    scores float [B, V]) -> float [B, V]``; ``for_row(b)`` is the processor of batch row b alone (draftless calls it
    on one row's tree nodes, ``input_ids`` [1, L'])."""

    def __init__(self, grammar):
        self.grammar = grammar
        self._rows: dict[int, _RowState] = {}
        self.busy_s = 0.0  # seconds spent in calls (matcher moves, masks): the grammar's cost

    def for_row(self, row: int) -> RowGrammarProcessor:
        return RowGrammarProcessor(self, int(row))

    def _state(self, row: int) -> _RowState:
        state = self._rows.get(row)
        if state is None:
            state = self._rows[row] = _RowState(self.grammar.matcher())
        return state

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and scores {tuple(scores.shape)} disagree on rows")
        return self._masked(input_ids, scores, lambda i: self._state(i))

    def _masked(self, input_ids: torch.Tensor, scores: torch.Tensor, state_of) -> torch.Tensor:
        """``scores`` with each row i masked by ``state_of(i)`` (a ``_RowState``), timed into ``busy_s``."""
        t0 = time.perf_counter()
        ids = input_ids.cpu().numpy()
        out = scores.clone()
        for i in range(ids.shape[0]):
            out[i] = state_of(i).masked(ids[i], scores[i])
        self.busy_s += time.perf_counter() - t0
        return out


class RowGrammarProcessor:
    """The processor of one batch row of a ``GrammarLogitsProcessor``: ``input_ids`` [N, L] are N sequences of
    that row (tree nodes), each scored from the row's own matcher."""

    def __init__(self, parent: GrammarLogitsProcessor, row: int):
        self.parent = parent
        self.row = row

    @property
    def grammar(self):
        return self.parent.grammar

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        state = self.parent._state(self.row)
        return self.parent._masked(input_ids, scores, lambda i: state)


class _RowState:
    """One row's matcher and where its output starts (the length of the first ``input_ids`` it saw)."""

    def __init__(self, matcher: Matcher):
        self.matcher = matcher
        self.prompt: np.ndarray | None = None
        self._eos = np.asarray(sorted(matcher.eos_ids), dtype=np.int64)

    def masked(self, ids: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` float [V] with every token the grammar forbids after ``ids`` (int64 [L]) set to ``-inf``."""
        if self.prompt is None:
            self.prompt = ids.copy()
        elif len(ids) < len(self.prompt) or not np.array_equal(ids[: len(self.prompt)], self.prompt):
            raise ValueError("this GrammarLogitsProcessor was called with a sequence that does not extend its first "
                             "prompt: make a new processor for each generate call")
        output = ids[len(self.prompt):]
        ends = np.flatnonzero(np.isin(output, self._eos))
        if len(ends):  # past the end of the output (a tree node after EOS): nothing is committed from here
            output = output[: ends[0] + 1]
        try:
            self.matcher.sync(output)
        except GrammarViolation as err:
            raise ValueError(f"{err}: the output left the grammar (another processor or the caller chose a token "
                             "it forbids)") from err
        if self.matcher.is_ended():
            return scores
        words = self.matcher.bitmask_words()
        few = self.matcher.allowed_ids(limit=FEW_IDS, words=words)
        if few is not None:  # a forced or nearly forced position: copy the few allowed scores
            allowed = torch.from_numpy(few).to(scores.device)
            out = torch.full_like(scores, float("-inf"))
            out[allowed] = scores[allowed]
            return out
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
        mask = torch.from_numpy(self.matcher.allowed_mask(words))
        allowed[: len(mask)] = mask[: scores.shape[-1]]
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))


def find_grammar(processors):
    """The grammar a row's processors enforce: a ``GrammarLogitsProcessor``'s (or its row processor's)
    ``Grammar``, or an ``XGrammar`` for xgrammar's processor (``xgrammar_bridge.py``); None without one."""
    for proc in processors or ():
        if isinstance(proc, (GrammarLogitsProcessor, RowGrammarProcessor)):
            return proc.grammar
        bridged = grammar_of(proc)
        if bridged is not None:
            return bridged
    return None
