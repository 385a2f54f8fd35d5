"""``Segment``: one generation of a history, a growable suffix automaton over some past requests' texts.

A suffix automaton cannot forget a text, so a history is cut into segments of a bounded number of requests and
bytes and forgets by dropping a whole segment (``HistoryStore`` decides which). Inside a segment the requests'
contexts (prompt + output) are joined by ``SEPARATOR``, an id no tokenizer uses: a match never spans two requests
(no context contains the separator) and a draft never proposes it (it is the kernels' ``skip_token``).
"""
from __future__ import annotations

import numpy as np

from ..index.suffix_automaton import SuffixAutomaton
from ..index.tokens import MAX_TOKEN_ID, as_token_array

SEPARATOR = MAX_TOKEN_ID  # 2**31 - 2: far above any vocabulary, inside the automaton's id range


class Segment:
    """Requests recorded one after another into one growable automaton.

    - ``seq``: the store-wide creation number (smaller is older), what eviction and recency read;
    - ``n_requests``, ``n_tokens`` (separators included), ``nbytes()`` (the automaton's used arrays, measured);
    - ``request_bounds``: int64 offsets of each request's first token in ``sam.tokens`` plus the end, so the
      segment can be written out and replayed (``HistoryStore`` persistence) request by request.
    """

    def __init__(self, seq: int, capacity: int = 1024):
        self.seq = int(seq)
        self.sam = SuffixAutomaton(capacity)
        self._bounds = [0]

    def add(self, context) -> None:
        """Append one request's ``context`` (int[L] token ids, L >= 1) followed by the separator."""
        arr = as_token_array(context)
        if arr.size == 0:
            raise ValueError("an empty context has nothing to record")
        if int(arr.max()) >= SEPARATOR:
            raise ValueError(f"token id {int(arr.max())} collides with the history separator {SEPARATOR}")
        # One extend call: the separator rides along, so a request costs one kernel call.
        self.sam.extend(np.append(arr, np.int32(SEPARATOR)))
        self._bounds.append(self.sam.n_tokens)

    @property
    def n_requests(self) -> int:
        return len(self._bounds) - 1

    @property
    def n_tokens(self) -> int:
        return self.sam.n_tokens

    @property
    def request_bounds(self) -> np.ndarray:
        return np.asarray(self._bounds, dtype=np.int64)

    def requests(self) -> list[np.ndarray]:
        """The recorded contexts, oldest first, separators stripped (int32 copies)."""
        toks = self.sam.tokens
        return [np.array(toks[a: b - 1]) for a, b in zip(self._bounds[:-1], self._bounds[1:])]

    def nbytes(self) -> int:
        return self.sam.nbytes()

    def __repr__(self) -> str:
        return f"Segment(seq={self.seq}, requests={self.n_requests}, tokens={self.n_tokens}, bytes={self.nbytes()})"
