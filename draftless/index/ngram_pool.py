"""``NGramPool``: a bounded pool of n-grams keyed by their first token, most recent first.

Lookahead decoding fills it with the n-grams its Jacobi trajectories produce and drafts from the n-grams that start
with the last committed token. Two bounds keep it small whatever the request length: at most ``per_key``
continuations per first token (re-inserting one makes it the most recent; the oldest is dropped past the bound), and
at most ``max_keys`` first tokens (the key used least recently is dropped whole).
"""
from __future__ import annotations

from collections import OrderedDict


class NGramPool:
    """``per_key``: continuations kept per first token; ``max_keys``: first tokens kept (least recently used go)."""

    def __init__(self, per_key: int = 8, max_keys: int = 4096):
        if per_key < 1 or max_keys < 1:
            raise ValueError("per_key and max_keys must be at least 1")
        self.per_key = int(per_key)
        self.max_keys = int(max_keys)
        # first token -> ordered continuations (oldest first), each a tuple of ints
        self._pool: OrderedDict[int, OrderedDict[tuple[int, ...], None]] = OrderedDict()

    def __len__(self) -> int:
        """Number of n-grams held."""
        return sum(len(v) for v in self._pool.values())

    @property
    def n_keys(self) -> int:
        return len(self._pool)

    def add(self, ngram) -> None:
        """Insert ``ngram`` (a sequence of at least two ints): its first token is the key, the rest the
        continuation. Already present: it becomes the key's most recent."""
        ngram = tuple(int(t) for t in ngram)
        if len(ngram) < 2:
            raise ValueError("an n-gram needs a first token and at least one continuation token")
        key, continuation = ngram[0], ngram[1:]
        entries = self._pool.get(key)
        if entries is None:
            entries = self._pool[key] = OrderedDict()
            if len(self._pool) > self.max_keys:
                self._pool.popitem(last=False)
        else:
            self._pool.move_to_end(key)
        entries[continuation] = None
        entries.move_to_end(continuation)
        if len(entries) > self.per_key:
            entries.popitem(last=False)

    def continuations(self, key: int) -> list[tuple[int, ...]]:
        """The continuations stored after first token ``key``, most recent first (empty when none)."""
        entries = self._pool.get(int(key))
        return [] if entries is None else list(reversed(entries))

    def clear(self) -> None:
        self._pool.clear()
