"""``HistoryStore``: what a deployment has generated, per namespace, bounded in memory, optionally on disk.

Each namespace (a user, a tenant, a task; ``None`` is the default one) owns its own list of ``Segment``s, oldest
first: separate automata per namespace make isolation structural, a draft for one namespace cannot reach another's
text because it never queries another's automata. A request is recorded into its namespace's newest segment until
that segment holds ``segment_requests`` requests or an eighth of the memory bound; then a new segment starts.

The bound (``max_bytes`` of measured automaton arrays, and/or ``max_tokens``) is over the whole store, every
namespace together; after each record the store drops whole segments, globally oldest first, until it holds again
(a request that alone exceeds the bound is dropped with its segment). So the measured size is under the bound after
every ``record``, and what the store keeps is always the most recent requests of each namespace, in whole segments.

With a ``path`` the store is persisted (``draftless.history.persist``) every ``save_every`` records and on
``flush()``, and reloaded by ``HistoryStore.open``.
"""
from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from .segment import Segment

DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_SEGMENT_REQUESTS = 256
SEGMENTS_PER_BOUND = 8  # a segment is closed at 1/8 of the bound, so eviction frees memory in steps of ~1/8


def _check_namespace(namespace) -> None:
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError(f"a namespace is a str or None, not {type(namespace).__name__}")


class HistoryStore:
    """Past requests' contexts per namespace (see the module docstring).

    - ``max_bytes``: bound on ``nbytes()`` (None: no byte bound); ``max_tokens``: bound on ``n_tokens`` (None: none);
      at least one must be set;
    - ``segment_requests``: requests per segment before a new one starts;
    - ``path`` / ``tokenizer_identity`` / ``save_every``: persistence (use ``HistoryStore.open`` to reload).
    """

    def __init__(self, max_bytes: int | None = DEFAULT_MAX_BYTES, max_tokens: int | None = None,
                 segment_requests: int = DEFAULT_SEGMENT_REQUESTS, path: str | os.PathLike | None = None,
                 tokenizer_identity: dict | None = None, save_every: int = 1):
        if max_bytes is None and max_tokens is None:
            raise ValueError("a history needs a bound: max_bytes and/or max_tokens")
        for name, value in (("max_bytes", max_bytes), ("max_tokens", max_tokens)):
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if int(segment_requests) < 1 or int(save_every) < 1:
            raise ValueError("segment_requests and save_every must be at least 1")
        if path is not None and tokenizer_identity is None:
            raise ValueError("a history kept on disk needs the tokenizer's identity (pass tokenizer=...), so that a "
                             "history written with another tokenizer is refused when it is reloaded")
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.segment_requests = int(segment_requests)
        self.path = path
        self.tokenizer_identity = tokenizer_identity
        self.save_every = int(save_every)
        self._spaces: dict[str | None, list[Segment]] = {}
        self._next_seq = 0
        self._unsaved = 0
        self.n_recorded = 0  # requests recorded since this object was made (reloaded ones not counted)
        self.n_evicted_segments = 0
        # Thread contract: any number of engines and threads may share a store. ``lock`` is held while a request is
        # recorded (its segment's automaton grows in place) and by readers of a segment's automaton
        # (``HistoryDrafter`` matches and drafts under it), so no reader ever sees an automaton mid-extend.
        self.lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ persistence
    @classmethod
    def open(cls, path: str | os.PathLike, tokenizer_identity: dict, **config) -> HistoryStore:
        """The store persisted at ``path`` (an empty one when ``path`` does not exist yet), saving back there.

        Raises ``HistoryError`` (a ``DatastoreError``) for a directory that is not a history, a corrupt one, a newer
        format, or one written with another tokenizer."""
        from .persist import load_history

        store = cls(path=path, tokenizer_identity=tokenizer_identity, **config)
        for seq, namespace, requests in load_history(path, tokenizer_identity):
            seg = Segment(seq)
            for context in requests:
                seg.add(context)
            store._spaces.setdefault(namespace, []).append(seg)
            store._next_seq = max(store._next_seq, seq + 1)
        for segments in store._spaces.values():
            segments.sort(key=lambda s: s.seq)
        store._evict()  # a smaller bound than the saved store's applies at once
        return store

    def save(self) -> None:
        """Write the store to its ``path`` now (atomically: a crash leaves the previous complete save)."""
        from .persist import save_history

        if self.path is None:
            raise ValueError("this history has no path to save to")
        with self.lock:
            save_history(self.path, self._all_segments(), self.tokenizer_identity)
            self._unsaved = 0

    def flush(self) -> None:
        """Save what is not saved yet (a no-op without a path or unsaved records)."""
        if self.path is not None and self._unsaved:
            self.save()

    # ------------------------------------------------------------------------------------------ recording
    def record(self, namespace: str | None, context) -> None:
        """Append one finished request's ``context`` (int[L]: prompt + output) to ``namespace``'s history, then
        evict to the bound and save when due."""
        _check_namespace(namespace)
        with self.lock:
            segments = self._spaces.setdefault(namespace, [])
            if not segments or self._full(segments[-1]):
                segments.append(Segment(self._next_seq))
                self._next_seq += 1
            segments[-1].add(context)
            self.n_recorded += 1
            self._evict()
            self._unsaved += 1
            if self.path is not None and self._unsaved >= self.save_every:
                self._save_when_due()

    def _save_when_due(self) -> None:
        """The automatic save after a record: a failure to write (a full disk) must not cost the caller the
        generation it just finished, so it warns and keeps the records in memory for the next save."""
        try:
            self.save()
        except OSError as exc:
            warnings.warn(f"history not saved ({exc}); its {self._unsaved} unsaved request(s) stay in memory and "
                          f"the next save retries", RuntimeWarning, stacklevel=3)

    def _full(self, seg: Segment) -> bool:
        if seg.n_requests >= self.segment_requests:
            return True
        if self.max_bytes is not None and seg.nbytes() * SEGMENTS_PER_BOUND >= self.max_bytes:
            return True
        return self.max_tokens is not None and seg.n_tokens * SEGMENTS_PER_BOUND >= self.max_tokens

    def _over(self) -> bool:
        return ((self.max_bytes is not None and self.nbytes() > self.max_bytes)
                or (self.max_tokens is not None and self.n_tokens > self.max_tokens))

    def _evict(self) -> None:
        while self._over():
            namespace, segments = min(((ns, segs) for ns, segs in self._spaces.items() if segs),
                                      key=lambda item: item[1][0].seq)
            segments.pop(0)
            self.n_evicted_segments += 1
            if not segments:
                del self._spaces[namespace]

    # ------------------------------------------------------------------------------------------ queries
    def segments(self, namespace: str | None) -> list[Segment]:
        """``namespace``'s segments, newest first (a new list; the segments themselves are live)."""
        _check_namespace(namespace)
        with self.lock:
            return list(reversed(self._spaces.get(namespace, [])))

    def namespaces(self) -> list[str | None]:
        return list(self._spaces)

    def _all_segments(self) -> list[tuple[str | None, Segment]]:
        return sorted(((ns, seg) for ns, segs in self._spaces.items() for seg in segs), key=lambda x: x[1].seq)

    def requests(self, namespace: str | None) -> list[np.ndarray]:
        """The contexts ``namespace`` still holds, oldest first (what a rebuilt store would be fed)."""
        return [r for seg in reversed(self.segments(namespace)) for r in seg.requests()]

    def nbytes(self) -> int:
        """Measured bytes of every segment's automaton arrays (used parts: the growable buffers' untouched spare
        room is ``np.empty`` pages that cost no memory)."""
        return sum(seg.nbytes() for segs in self._spaces.values() for seg in segs)

    @property
    def n_tokens(self) -> int:
        return sum(seg.n_tokens for segs in self._spaces.values() for seg in segs)

    @property
    def n_requests(self) -> int:
        return sum(seg.n_requests for segs in self._spaces.values() for seg in segs)

    def __repr__(self) -> str:
        return (f"HistoryStore(namespaces={len(self._spaces)}, requests={self.n_requests}, tokens={self.n_tokens}, "
                f"bytes={self.nbytes()}, max_bytes={self.max_bytes}, max_tokens={self.max_tokens}, path={self.path})")
