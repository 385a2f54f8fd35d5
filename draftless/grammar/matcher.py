"""Where a token sequence stands in a grammar: which tokens may come next, which are forced.

A ``Matcher`` follows one sequence of output tokens (not the prompt). ``sync`` moves it to any sequence by rolling
back to the common prefix and consuming the rest, so callers that jump around a draft tree (a drafter, a processor
called on tree nodes in walk order) need no bookkeeping of their own."""
from __future__ import annotations

import numpy as np

from .llg import llguidance

# positions whose admitted ids a matcher keeps (a grammar's state is a function of the tokens, so this is exact)
ALLOWED_CACHE_SIZE = 512


class GrammarViolation(ValueError):
    """A token sequence the grammar does not admit was given to ``Matcher.sync``."""


class Matcher:
    """One position in ``grammar`` (a ``draftless.grammar.Grammar``), starting at the empty output.

    ``tokens``: the output tokens consumed so far (a list of int; read it, never edit it)."""

    def __init__(self, grammar):
        self.grammar = grammar
        self._matcher = llguidance().LLMatcher(grammar.compiler._tokenizer, grammar.text, log_level=0)
        if self._matcher.is_error():
            raise ValueError(f"{grammar!r} cannot start: {self._matcher.get_error()}")
        self.vocab_size = grammar.vocab_size
        # the ids that end the output: admitted once the grammar is complete, and nothing after them
        self.eos_ids = frozenset(int(t) for t in grammar.compiler._tokenizer.eos_tokens)
        self.tokens: list[int] = []
        self._allowed_cache: dict[tuple, np.ndarray | None] = {}

    # ------------------------------------------------------------------ moving
    def can_take(self, token: int) -> bool:
        """Whether ``token`` may come next (nothing is consumed)."""
        token = int(token)
        if token in self.eos_ids:  # llguidance validates no EOS: read its bit in the next-token mask
            if self.is_ended():
                return False
            words = self.bitmask_words()
            return bool((int(words[token >> 5]) >> (token & 31)) & 1)
        return self._matcher.validate_tokens([token]) == 1

    def push(self, token: int) -> bool:
        """Consume ``token`` when the grammar admits it (True); else leave the matcher as it was (False)."""
        if not self.can_take(token):
            return False
        if not self._matcher.consume_token(int(token)):  # pragma: no cover - validate_tokens said it fits
            raise RuntimeError(f"the matcher refused token {token} it had validated: {self._matcher.get_error()}")
        self.tokens.append(int(token))
        return True

    def pop(self, n: int = 1) -> None:
        """Undo the last ``n`` consumed tokens."""
        if n:
            if n > len(self.tokens) or not self._matcher.rollback(n):
                raise RuntimeError(f"cannot roll back {n} of {len(self.tokens)} tokens")
            del self.tokens[-n:]

    def rewind(self, tokens: list[int], known: int = 0) -> int:
        """Roll back to the longest common prefix of what was consumed and ``tokens`` (a list of int; ``known`` as
        in ``sync``); returns its length."""
        mine = self.tokens
        limit = min(len(mine), len(tokens))
        common = min(known, limit)
        while common < limit and mine[common] == tokens[common]:
            common += 1
        self.pop(len(mine) - common)
        return common

    def sync(self, tokens, known: int = 0) -> None:
        """Stand after ``tokens`` (a sequence of int output ids): roll back to the common prefix with what was
        consumed, then consume the rest. ``known``: a length up to which ``tokens`` is known to equal what was
        consumed (comparison starts there). Raises ``GrammarViolation`` (the matcher left at the longest admitted
        prefix) when the grammar does not admit ``tokens``."""
        tokens = [int(t) for t in tokens]
        common = self.rewind(tokens, known)
        for at in range(common, len(tokens)):
            if not self.push(tokens[at]):
                raise GrammarViolation(f"output token {tokens[at]} at position {at} is not admitted by "
                                       f"{self.grammar!r}")

    # ------------------------------------------------------------------ reading
    def bitmask_words(self) -> np.ndarray:
        """uint32[ceil(V / 32)]: the next-token bitmask (bit j of word w: id 32w + j may come next)."""
        return np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint32)

    def allowed_ids(self, limit: int | None = None, words: np.ndarray | None = None) -> np.ndarray | None:
        """int64[k]: the ids that may come next, ascending (EOS among them once the output may end); None when
        ``limit`` is given and more than ``limit`` ids may come (found without listing them all). ``words``: the
        bitmask ``bitmask_words()`` returned for this position, when the caller already has it."""
        key = None
        if words is None:  # the same position asked again (a drafter re-reads the nodes it drafted): no new mask
            key = (tuple(self.tokens), limit)
            if key in self._allowed_cache:
                return self._allowed_cache[key]
            words = self.bitmask_words()
        ids = self._allowed_from_words(words, limit)
        if key is not None:
            if len(self._allowed_cache) >= ALLOWED_CACHE_SIZE:
                self._allowed_cache.clear()
            self._allowed_cache[key] = ids
        return ids

    def _allowed_from_words(self, words: np.ndarray, limit: int | None) -> np.ndarray | None:
        nonzero = np.flatnonzero(words)
        if limit is not None and len(nonzero) > limit:
            return None
        bits = np.unpackbits(words[nonzero].view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
        ids = (nonzero[:, None] * 32 + np.arange(32)[None, :])[bits.astype(bool)]
        ids = ids[ids < self.vocab_size].astype(np.int64)
        return None if limit is not None and len(ids) > limit else ids

    def allowed_mask(self, words: np.ndarray | None = None) -> np.ndarray:
        """bool[V]: which ids may come next (V: the grammar's vocabulary size); ``words`` as in ``allowed_ids``."""
        words = self.bitmask_words() if words is None else words
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")
        return bits[: self.vocab_size].astype(bool)

    def forced_ids(self) -> list[int]:
        """The tokens the grammar forces from here (its fast-forward tokens: the canonical tokenization of the
        bytes every continuation starts with; empty where the next bytes are open). The first of them may still
        have admissible alternatives that spell the same bytes differently."""
        return [int(t) for t in self._matcher.compute_ff_tokens()]

    def is_accepting(self) -> bool:
        """Whether the output may end here."""
        return bool(self._matcher.is_accepting())

    def is_ended(self) -> bool:
        """Whether an EOS was consumed: nothing may follow."""
        return bool(self.tokens) and self.tokens[-1] in self.eos_ids
