"""``SuffixAutomaton``: the Python face of the suffix-automaton kernels in ``draftless.index.kernels.sam_kernels``.

A suffix automaton of a token sequence ``T`` (n tokens) is the smallest automaton accepting every substring of
``T``: at most ``2n`` states and ``3n`` transitions. Each state is a class of substrings sharing the same set of end
positions, so one state answers at once "does this occur", "how often" (``count``), "where" (``end_position``) and
"what followed it" (``continuations``, ``next_tokens``). Reading a text token by token and following suffix links on
failure keeps the longest suffix of the text that occurs in ``T`` (``step``/``match``) in amortized O(1) per token.

Two modes:

- *growable* (``SuffixAutomaton()``, ``SuffixAutomaton.build(tokens)``): supports ``extend``; counts stay exact
  after every token. Used for the dynamic automaton of a request (prompt + generated text).
- *frozen* (``freeze()``, ``from_arrays``): read-only, compact CSR transitions; ``to_arrays`` / ``from_arrays`` are
  its arrays, which ``draftless.stores.indexes`` writes to and maps back from a datastore of kind ``"sam"``.

Token ids are int32 values in ``[0, 2**31 - 1)``; states are ints with the root at 0.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .kernels import sam_kernels as K
from .tokens import as_token_array

KIND = "sam"
FORMAT_ARRAYS = ("tokens", "states", "edge_off", "edge_tok", "edge_to", "root_next")
# A batch build pre-allocates the worst case for states (2n) and a pool of 3 slots/token (2.4-2.6 are used on code
# and prose; the kernel grows it if a corpus needs more): np.empty pages that are never touched cost no memory, and
# pre-allocation avoids copies while growing.
POOL_SLOTS_PER_TOKEN = 3
MAX_TOKENS = 1 << 29  # int32 state ids and pool offsets


class SuffixAutomaton:
    """Suffix automaton over int32 token ids (see the module docstring).

    ``SuffixAutomaton(capacity)`` is an empty growable automaton with room for ``capacity`` tokens before the
    first reallocation.
    """

    kind = KIND  # the datastore kind of its arrays

    def __init__(self, capacity: int = 256):
        capacity = max(int(capacity), 16)
        self._tokens = np.empty(capacity, dtype=np.int32)
        self._n = 0
        self._st, self._pool, self._hdr = K.sam_new(2 * capacity + 2, 4 * capacity + 64)
        self._frozen = False
        self._edge_off = self._edge_tok = self._edge_to = self._root_next = np.zeros(0, dtype=np.int32)
        self._n_states_frozen = 0
        self.store_meta: dict | None = None  # meta.json of a loaded store

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def build(cls, tokens, copy: bool = True, reserve: int = 0) -> SuffixAutomaton:
        """Batch-build the growable automaton of ``tokens`` (counts propagated once at the end).

        ``copy=False`` keeps a reference to an int32 contiguous ``tokens`` instead of copying it (big corpora);
        the caller must then not modify it. ``reserve``: room for that many later ``extend`` tokens before the
        arrays are reallocated (implies a copy of ``tokens``).
        """
        arr = as_token_array(tokens)
        n = len(arr)
        if reserve > 0:
            buf = np.empty(n + int(reserve), dtype=np.int32)
            buf[:n] = arr
            arr = buf
        elif copy and arr is tokens:
            arr = arr.copy()
        if n + reserve > MAX_TOKENS:
            raise ValueError(f"at most {MAX_TOKENS} tokens per automaton (int32 state ids and offsets)")
        room = n + max(int(reserve), 0)
        self = cls.__new__(cls)
        self._frozen = False
        self._tokens = arr
        self._n = n
        self._st = np.empty((2 * room + 2, K.N_COLS), dtype=np.int32)
        self._pool = np.empty((POOL_SLOTS_PER_TOKEN * room + 64, 2), dtype=np.int32)
        self._hdr = np.zeros(K.HDR_SIZE, dtype=np.int64)
        K.sam_init(self._st, self._hdr)
        self._st, self._pool = K.sam_extend(arr, 0, n, self._st, self._pool, self._hdr, False)
        K.sam_count_occurrences(self._st, self.n_states)
        self._edge_off = self._edge_tok = self._edge_to = self._root_next = np.zeros(0, dtype=np.int32)
        self._n_states_frozen = 0
        self.store_meta = None
        return self

    def extend(self, tokens) -> None:
        """Append one token or a sequence of tokens (growable mode only); counts stay exact."""
        if self._frozen:
            raise ValueError("this suffix automaton is frozen (loaded or frozen): it cannot be extended")
        arr = as_token_array(np.atleast_1d(tokens))
        k = len(arr)
        if self._n + k > MAX_TOKENS:
            raise ValueError(f"at most {MAX_TOKENS} tokens per automaton (int32 state ids and offsets)")
        if self._n + k > len(self._tokens):
            grown = np.empty(max(2 * len(self._tokens), self._n + k), dtype=np.int32)
            grown[: self._n] = self._tokens[: self._n]
            self._tokens = grown
        self._tokens[self._n: self._n + k] = arr
        self._st, self._pool = K.sam_extend(self._tokens, self._n, self._n + k, self._st, self._pool, self._hdr, True)
        self._n += k

    def freeze(self, vocab_size: int | None = None) -> SuffixAutomaton:
        """Convert to the compact read-only layout in place (drops the hash tables); returns ``self``.

        ``vocab_size`` sizes the dense root row (default: largest token + 1).
        """
        if self._frozen:
            return self
        n_states = self.n_states
        n_edges = int(self._hdr[K.H_EDGES])
        top = int(self.tokens.max()) + 1 if self._n else 1
        vocab = max(int(vocab_size or 0), top)
        edge_off = np.empty(n_states + 1, dtype=np.int32)
        edge_tok = np.empty(n_edges, dtype=np.int32)
        edge_to = np.empty(n_edges, dtype=np.int32)
        root_next = np.empty(vocab, dtype=np.int32)
        K.sam_freeze_edges(self._st, self._pool, n_states, edge_off, edge_tok, edge_to, root_next)
        self._pool = np.zeros((0, 2), dtype=np.int32)
        # In place: the frozen table is a view of the first 16 bytes/state of the old buffer (no copy at peak).
        self._st = K.sam_compact_rows(self._st, n_states)
        self._tokens = self._tokens[: self._n]
        self._edge_off, self._edge_tok, self._edge_to, self._root_next = edge_off, edge_tok, edge_to, root_next
        self._n_states_frozen = n_states
        self._frozen = True
        return self

    # ------------------------------------------------------------------------------------------ as arrays
    def to_arrays(self, vocab_size: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """The frozen layout as named arrays (``FORMAT_ARRAYS``) and its sizes ``{"n_states", "n_edges"}``: what a
        ``"sam"`` datastore holds (``draftless.stores.indexes.save_index``). A growable automaton is converted
        through a frozen copy and stays growable (``vocab_size``: as ``freeze``'s)."""
        sam = self if self._frozen else self.copy().freeze(vocab_size)
        arrays = {
            "tokens": sam._tokens, "states": sam._st, "edge_off": sam._edge_off,
            "edge_tok": sam._edge_tok, "edge_to": sam._edge_to, "root_next": sam._root_next,
        }
        return arrays, {"n_states": sam.n_states, "n_edges": sam.n_transitions}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> SuffixAutomaton:
        """A frozen automaton over ``arrays`` as ``to_arrays`` gives them (used in place: memory-mapped arrays stay
        mapped); ``meta`` (a store's ``meta.json``) is kept as ``store_meta``. ``ValueError`` when arrays are
        missing or their shapes and dtypes do not fit together."""
        missing = [name for name in FORMAT_ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"suffix-automaton store lacks arrays {missing}")
        a = arrays
        n_states = a["states"].shape[0]
        n_edges = a["edge_tok"].shape[0]
        n_tokens = int((meta or {}).get("n_tokens", len(a["tokens"])))
        consistent = (
            a["states"].ndim == 2 and a["states"].shape[1] == K.N_FROZEN_COLS and n_states >= 1
            and a["edge_off"].shape == (n_states + 1,) and a["edge_to"].shape == (n_edges,)
            and int(a["edge_off"][-1]) == n_edges and a["tokens"].shape == (n_tokens,)
            and all(a[name].dtype == np.int32 for name in FORMAT_ARRAYS)
        )
        if not consistent:
            raise ValueError("suffix-automaton arrays have inconsistent shapes or dtypes")
        self = cls.__new__(cls)
        self._tokens = a["tokens"]
        self._n = len(a["tokens"])
        self._st = a["states"]
        self._pool = np.zeros((0, 2), dtype=np.int32)
        self._hdr = np.zeros(K.HDR_SIZE, dtype=np.int64)
        self._edge_off, self._edge_tok, self._edge_to, self._root_next = (
            a["edge_off"], a["edge_tok"], a["edge_to"], a["root_next"])
        self._n_states_frozen = n_states
        self._frozen = True
        self.store_meta = meta
        return self

    def copy(self) -> SuffixAutomaton:
        """A deep copy (used arrays only)."""
        other = SuffixAutomaton.__new__(SuffixAutomaton)
        other._n = self._n
        other._frozen = self._frozen
        other._tokens = self._tokens[: self._n].copy() if self._frozen else self._tokens.copy()
        other._st = self._st[: self.n_states].copy() if self._frozen else self._st.copy()
        other._pool = self._pool[: int(self._hdr[K.H_POOL])].copy() if not self._frozen else self._pool
        other._hdr = self._hdr.copy()
        other._edge_off, other._edge_tok, other._edge_to, other._root_next = (
            self._edge_off.copy(), self._edge_tok.copy(), self._edge_to.copy(), self._root_next.copy())
        other._n_states_frozen = self._n_states_frozen
        other.store_meta = self.store_meta
        return other

    # ------------------------------------------------------------------------------------------ sizes
    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def n_tokens(self) -> int:
        return self._n

    @property
    def n_states(self) -> int:
        return self._n_states_frozen if self._frozen else int(self._hdr[K.H_STATES])

    @property
    def n_transitions(self) -> int:
        return int(self._edge_tok.shape[0]) if self._frozen else int(self._hdr[K.H_EDGES])

    @property
    def tokens(self) -> np.ndarray:
        """int32[n_tokens]: the automaton's text (read-only view)."""
        view = self._tokens[: self._n]
        view = view.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return self._n

    def nbytes(self) -> int:
        """Bytes held by the used parts of the arrays."""
        if self._frozen:
            parts = (self._tokens, self._st, self._edge_off, self._edge_tok, self._edge_to, self._root_next)
            return int(sum(p.nbytes for p in parts))
        return int(self._n * 4 + self.n_states * K.N_COLS * 4 + self._hdr[K.H_POOL] * 8)

    # ------------------------------------------------------------------------------------------ kernels' view
    def _layout(self):
        """The argument tuple every query kernel starts with."""
        return (self._frozen, self._st, self._pool, self._edge_off, self._edge_tok, self._edge_to, self._root_next)

    # ------------------------------------------------------------------------------------------ queries
    def transition(self, state: int, token: int) -> int:
        """Target of ``(state, token)``, -1 when absent."""
        if token < 0:
            return -1
        if self._frozen:
            return int(K.csr_next(self._edge_off, self._edge_tok, self._edge_to, self._root_next, state, token))
        return int(K.dyn_next(self._st, self._pool, state, token))

    def step(self, state: int, length: int, token: int) -> tuple[int, int]:
        """Longest-suffix matching by one token: returns the new ``(state, length)``."""
        if token < 0:
            return 0, 0
        s, n = K.sam_step(*self._layout(), state, length, token)
        return int(s), int(n)

    def match(self, tokens, state: int = 0, length: int = 0, return_lengths: bool = False):
        """Feed ``tokens`` from ``(state, length)``; returns the final ``(state, length)`` (and, with
        ``return_lengths``, int32[len(tokens)]: the longest-suffix match length after each token)."""
        arr = as_token_array(tokens)
        lengths = np.empty(len(arr) if return_lengths else 0, dtype=np.int32)
        s, n = K.sam_match(*self._layout(), arr, state, length, lengths)
        return (int(s), int(n), lengths) if return_lengths else (int(s), int(n))

    def find(self, pattern) -> int:
        """State of ``pattern`` (a token sequence) or -1 when it does not occur. The empty pattern is the root."""
        arr = np.asarray(pattern)
        if arr.size and arr.min() < 0:
            return -1
        return int(K.sam_find(*self._layout(), as_token_array(arr)))

    def __contains__(self, pattern) -> bool:
        return self.find(pattern) >= 0

    def occurrences(self, pattern) -> int:
        """How many times ``pattern`` occurs (overlaps included); ``n_tokens + 1`` positions hold the empty one."""
        if len(pattern) == 0:
            return self._n + 1
        s = self.find(pattern)
        return self.count(s) if s >= 0 else 0

    def count(self, state: int) -> int:
        """Number of end positions of ``state`` (occurrences of each of its strings)."""
        return int(self._st[state, K.CNT])

    def length(self, state: int) -> int:
        """Length of the longest string of ``state``."""
        return int(self._st[state, K.LEN])

    def link(self, state: int) -> int:
        return int(self._st[state, K.LINK])

    def end_position(self, state: int) -> int:
        """Index in ``tokens`` of the last token of the first occurrence of ``state``'s strings (-1 at the root)."""
        return int(self._st[state, K.POS])

    def continuations(self, state: int, max_len: int, stop_token: int | None = None) -> np.ndarray:
        """int32[<= max_len]: the tokens that followed the first occurrence of ``state``'s strings, cut before
        ``stop_token`` (e.g. a document separator). Empty at the end of the text."""
        start = self.end_position(state) + 1
        out = self._tokens[start: min(start + max(int(max_len), 0), self._n)]
        if stop_token is not None:
            hits = np.flatnonzero(out == stop_token)
            if hits.size:
                out = out[: hits[0]]
        return np.array(out, dtype=np.int32)

    def next_tokens(self, state: int, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The transitions of ``state`` by decreasing count: ``(tokens int32[d], counts int32[d])``, ``d <= k``.

        ``counts[i]`` is how often ``tokens[i]`` followed (any string of) ``state`` in the text.
        """
        toks, targets = K.sam_children(*self._layout()[:6], state)
        counts = np.asarray(self._st[targets, K.CNT], dtype=np.int32)
        order = np.argsort(-counts, kind="stable")
        if k is not None:
            order = order[:k]
        return toks[order], counts[order]

    def longest_repeated_suffix(self) -> tuple[int, int]:
        """``(state, length)`` of the longest suffix of the text that also occurs ending earlier (growable mode):
        the suffix link of the last state, for free. ``(0, 0)`` when nothing repeats."""
        if self._frozen:
            raise ValueError("longest_repeated_suffix needs the growable automaton")
        s = int(self._st[int(self._hdr[K.H_LAST]), K.LINK])
        s = max(s, 0)
        return s, int(self._st[s, K.LEN])

    def draft_tree(self, state: int, length: int, budget: int, max_depth: int, top_k: int = 3,
                   smoothing: float = 1.0, min_score: float = 0.0, skip_token: int = -1):
        """Best-first continuation tree from the match ``(state, length)``: see ``sam_kernels.sam_draft_tree``.

        Returns ``(tokens int64[n], parents int32[n], scores float32[n])`` with the root's token left as -1.
        """
        if state <= 0:
            return (np.array([-1], dtype=np.int64), np.array([-1], dtype=np.int32), np.ones(1, dtype=np.float32))
        return K.sam_draft_tree(*self._layout()[:6], state, length, budget, max_depth, top_k, smoothing,
                                min_score, skip_token)

    def draft_tree_backing_off(self, state: int, length: int, min_length: int, budget: int, depth_for, top_k: int = 3,
                               smoothing: float = 1.0, min_score: float = 0.0, skip_token: int = -1, tries: int = 3):
        """``draft_tree`` from the match ``(state, length)``, or, when that match continues only into
        ``skip_token`` (a document or request separator) or the text's end, from its shorter suffixes (suffix
        links), at most ``tries`` matches in all and none shorter than ``min_length``. ``depth_for(length)`` gives
        the depth limit for a match of that length.

        Returns ``draft_tree``'s arrays for the first match with a continuation, or None."""
        for _ in range(tries):
            if length < min_length:
                return None
            tokens, parents, scores = self.draft_tree(state, length, budget, depth_for(length), top_k, smoothing,
                                                      min_score, skip_token)
            if len(tokens) > 1:
                return tokens, parents, scores
            state = self.link(state)
            length = self.length(state)
        return None

    def __repr__(self) -> str:
        mode = "frozen" if self._frozen else "growable"
        return f"SuffixAutomaton({mode}, tokens={self._n}, states={self.n_states}, transitions={self.n_transitions})"
