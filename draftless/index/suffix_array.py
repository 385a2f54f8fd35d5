"""Suffix arrays over int32 token corpora (any vocabulary): construction, lookup, the ``"rest"`` datastore.

Construction, two builders giving the same array (``build_suffix_array(method=...)``):

- ``"divsufsort"`` (the default when ``pydivsufsort`` is installed): libdivsufsort on a byte packing of the tokens.
  The ids present are renumbered in order (``symbol_map``) and written as ``width`` big-endian bytes each (1 byte
  up to 256 distinct ids, 2 up to 65,536, 3 up to 16.7M), so token-aligned byte suffixes compare as the token
  suffixes; the aligned entries of the byte suffix array, divided by ``width``, are the token suffix array. Measured
  on SmolLM2 tokens of Python code (2-byte symbols): 50M tokens in 10 s of CPU, peak 12 bytes per token (the byte
  text and libdivsufsort's int32 slot per byte, then the result), ``bench-results/sa-builders.json``.
- ``"doubling"`` (the fallback): prefix doubling on numpy sorts (Manber-Myers with the "sort only unresolved
  groups" refinement of Larsson-Sadakane):

  1. the first ``c`` tokens of every suffix are packed into one int64 key (``c = 63 // bits(vocab + 1)``: 3 tokens
     for a 50k-260k vocabulary, 10 for a 48-token test vocabulary; the end of the text packs as 0, below every
     token) and the positions are argsorted by it. A suffix's *rank* is the slot of the first member of its group
     of equal keys, so ranks order suffixes by their first ``h = c`` tokens;
  2. while some groups hold more than one suffix, only the members of those groups are re-sorted, by the packed
     pair ``(rank[i], rank[i + h])`` (``rank[i + h] = -1`` past the end) which orders them by their first ``2h``
     tokens; ranks of the re-sorted slots are updated all at once and ``h`` doubles.

  Natural text resolves most suffixes in the first rounds; the rounds needed grow with the longest repeated
  substring (log2 of it). About 1.2-1.7M tokens/s on one core, peak 47-49 bytes per token.

Order: plain (token ids) or *separator-first* (``separator=``: the document separator sorts below every token),
the order of every ``"rest"`` store built since sharded stores came (``"sa_order"`` in its meta). In a
separator-first array lookups treat the separator as the end of the text, so a match never spans two documents
and the occurrences of a pattern in a corpus are the union of those in any split of it between documents
(``sharded_suffix_array``).

Lookup (``find``): two binary searches for the slots whose suffixes start with a query (O(m log n)); continuation
counting walks the tokens after each occurrence into a trie (``kernels.suffix_array_kernels``).

Store kind ``"rest"``: ``tokens.npy`` int32[n] + ``sa.npy`` (int32 below 2**31 tokens, else int64), memory-mapped
(``to_arrays`` / ``from_arrays`` here; the files are ``draftless.stores.indexes``'s).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .kernels import suffix_array_kernels as K
from .tokens import as_token_array

KIND = "rest"
FORMAT_ARRAYS = ("tokens", "sa")
# orders of a stored array (meta "sa_order"): plain id order, or the document separator below every id
PLAIN = "plain"
SEPARATOR_FIRST = "separator-first"


def _initial_keys(tokens: np.ndarray) -> tuple[np.ndarray, int]:
    """Pack the first ``c`` tokens of every suffix (as ``token + 1``; 0 past the end) into int64 keys."""
    n = len(tokens)
    top = int(tokens.max()) + 2 if n else 2
    bits = max(1, int(top - 1).bit_length())
    c = max(1, 63 // bits)
    keys = np.zeros(n, dtype=np.int64)
    shifted = tokens.astype(np.int64) + 1
    for j in range(c):
        keys <<= bits
        if j < n:
            keys[: n - j] |= shifted[j:]
    return keys, c


def _runs(sorted_vals: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """For a sorted array: ``heads`` (the index where each element's run of equal values starts) and ``single``
    (the element is alone in its run)."""
    m = len(sorted_vals)
    starts = np.empty(m, dtype=bool)
    starts[0] = True
    np.not_equal(sorted_vals[1:], sorted_vals[:-1], out=starts[1:])
    heads = np.arange(m, dtype=dtype)
    heads[~starts] = 0
    np.maximum.accumulate(heads, out=heads)
    single = starts  # a run of one starts here and the next element starts another run
    single[:-1] &= starts[1:].copy()
    return heads, single


def _index_dtype(n: int):
    return np.int32 if n < 2**31 - 1 else np.int64


def divsufsort_available() -> bool:
    """Whether ``pydivsufsort`` (libdivsufsort) can be imported."""
    try:
        import pydivsufsort  # noqa: F401
    except ImportError:
        return False
    return True


def _compact_ids(tokens: np.ndarray, separator: int | None) -> tuple[np.ndarray, int | None]:
    """``(tokens, separator)`` renumbered in order when the ids are sparse (the largest far above the token count,
    where ``symbol_map``'s table by id would be large): the same order, ids ``0 .. distinct - 1``."""
    top = max(int(tokens.max()), -1 if separator is None else int(separator))
    if top < 4 * len(tokens) + (1 << 20):
        return tokens, separator
    ids = np.unique(tokens) if separator is None else np.union1d(tokens, [separator])
    compact = np.searchsorted(ids, tokens).astype(np.int32)
    return compact, None if separator is None else int(np.searchsorted(ids, separator))


def symbol_map(tokens: np.ndarray, separator: int | None = None) -> tuple[np.ndarray, int]:
    """``(symbol_of, n_symbols)``: the ids that occur mapped to 0, 1, ... in id order, ``separator`` (if given)
    to 0 below all of them. Order-preserving, so a suffix sort of the symbols is the suffix sort of the tokens with
    the separator moved below every token (a *separator-first* array); only the ids present count, so a 262k
    vocabulary whose corpus uses fewer than 65,535 distinct ids still packs into 2 bytes per token."""
    top = int(tokens.max()) if len(tokens) else 0
    if separator is not None:
        top = max(top, int(separator))
    present = np.zeros(top + 1, dtype=bool)
    present[tokens] = True
    if separator is None:
        symbol_of = np.cumsum(present, dtype=np.int64) - 1
        return symbol_of, int(symbol_of[-1]) + 1
    present[separator] = False
    symbol_of = np.cumsum(present, dtype=np.int64)  # first real id -> 1
    n_symbols = int(symbol_of[-1]) + 1
    symbol_of[separator] = 0
    return symbol_of, n_symbols


def _divsufsort_owned(text: np.ndarray) -> np.ndarray | None:
    """libdivsufsort's suffix array of ``text`` uint8[m] (m < 2**31) as an int32[m] array this process owns, so it
    can be compacted and shrunk in place (``pydivsufsort.divsufsort`` returns a view of a ctypes buffer, which
    cannot shrink); None where pydivsufsort does not expose its library handle (then call its function)."""
    import ctypes

    try:
        from pydivsufsort.dll import libdivsufsort
    except ImportError:
        return None
    out = np.empty(len(text), dtype=np.int32)
    status = libdivsufsort.divsufsort(ctypes.c_void_p(text.ctypes.data), ctypes.c_void_p(out.ctypes.data),
                                      ctypes.c_int32(len(text)))
    if status:
        raise RuntimeError(f"libdivsufsort failed with status {status}")
    return out


def _divsufsort_suffix_array(tokens: np.ndarray, separator: int | None = None) -> np.ndarray:
    """libdivsufsort (through ``pydivsufsort``) on a big-endian byte packing of the tokens.

    libdivsufsort sorts bytes. Each token becomes ``width`` big-endian bytes of its symbol (``symbol_map``: 1 byte
    up to 256 distinct ids, 2 up to 65,536, ...), so comparing two token-aligned byte suffixes compares the token
    suffixes (and a suffix that ends first is smaller in both); the byte suffix array, restricted to token-aligned
    positions and divided by ``width``, is the token suffix array. Memory: ``width`` bytes of text plus a 4-byte slot
    per byte (8 past 2**31 bytes) while sorting, 10 bytes per token at ``width`` 2 (the tokens aside); the result is
    compacted into the byte array's first slots (a separate array past 2**31 bytes, where the dtypes differ)."""
    from pydivsufsort import divsufsort

    n = len(tokens)
    tokens, separator = _compact_ids(tokens, separator)
    symbol_of, n_symbols = symbol_map(tokens, separator)
    width = max(1, ((n_symbols - 1).bit_length() + 7) // 8)
    text = np.empty(n * width, dtype=np.uint8)
    K.pack_big_endian(tokens, symbol_of, width, text)
    del symbol_of
    byte_sa = _divsufsort_owned(text) if _index_dtype(len(text)) == np.int32 else None
    if byte_sa is None:
        byte_sa = divsufsort(text)
    del text
    dtype = _index_dtype(n)
    if byte_sa.dtype == dtype and byte_sa.flags.owndata:
        # Compact in place (slot ``j`` is written after slot ``i >= j`` was read) and shrink the allocation, so the
        # peak is the byte array's 4 bytes a byte, not that plus a second array of 4 bytes a token.
        kept = K.keep_aligned(byte_sa, width, byte_sa)
        byte_sa.resize(kept, refcheck=False)
        sa = byte_sa
    else:
        sa = np.empty(n, dtype=dtype)
        kept = K.keep_aligned(byte_sa, width, sa)
        del byte_sa
    if kept != n:  # cannot happen: every token starts exactly one aligned suffix
        raise RuntimeError(f"divsufsort returned {kept} token-aligned suffixes for {n} tokens")
    return sa


SA_METHODS = ("divsufsort", "doubling")


def default_sa_method() -> str:
    """``"divsufsort"`` when ``pydivsufsort`` is installed (faster, a third of the memory), else ``"doubling"``."""
    return "divsufsort" if divsufsort_available() else "doubling"


def build_suffix_array(tokens, progress: bool = False, method: str | None = None,
                       separator: int | None = None) -> np.ndarray:
    """The suffix array of ``tokens`` (int32 when ``n < 2**31``, else int64). See the module docstring.

    ``method``: ``"divsufsort"`` (libdivsufsort, the default when installed), ``"doubling"`` (prefix doubling in
    numpy, the fallback) or None for the default; both give the same array. ``separator``: sort this id below every
    other (a separator-first array, the order of a ``"rest"`` store: see the module docstring). ``progress`` shows
    a bar (doubling).
    """
    tokens = as_token_array(tokens)
    method = default_sa_method() if method is None else method
    if method not in SA_METHODS:
        raise ValueError(f"unknown suffix-array method {method!r}; known: {', '.join(SA_METHODS)}")
    if len(tokens) == 0:
        return np.zeros(0, dtype=_index_dtype(0))
    if method == "divsufsort":
        return _divsufsort_suffix_array(tokens, separator)
    if separator is not None:  # sort the symbols: the separator is 0, below every other
        tokens, separator = _compact_ids(tokens, separator)
        symbol_of, _ = symbol_map(tokens, separator)
        tokens = symbol_of[tokens].astype(np.int32)
        del symbol_of
    return _doubling_suffix_array(tokens, progress=progress)


def _doubling_suffix_array(tokens: np.ndarray, progress: bool = False) -> np.ndarray:
    """Prefix doubling on numpy sorts (the module docstring); the fallback builder."""
    from tqdm.auto import tqdm

    n = len(tokens)
    index_dtype = _index_dtype(n)
    keys, h = _initial_keys(tokens)
    sa = np.argsort(keys).astype(index_dtype)  # equal keys in any order: they share a rank
    keys = keys[sa]
    heads, single = _runs(keys, index_dtype)
    del keys
    rank = np.empty(n, dtype=index_dtype)
    rank[sa] = heads
    del heads
    unresolved = np.flatnonzero(~single).astype(index_dtype)  # slots of suffixes sharing their group
    del single
    bar = tqdm(total=n, desc="suffix array", unit="tok", unit_scale=True, disable=not progress)
    bar.update(n - len(unresolved))
    while len(unresolved):
        pos = sa[unresolved]
        # sort key (rank[i], rank[i + h]) packed into one int64: rank < n, rank[i + h] + 1 <= n (0 past the end)
        packed = rank[pos].astype(np.int64) * (n + 1)
        nxt = pos.astype(np.int64) + h
        inside = nxt < n
        packed[inside] += rank[nxt[inside]].astype(np.int64) + 1
        del nxt, inside
        order = np.argsort(packed)
        packed = packed[order]
        pos = pos[order]
        del order
        # Old groups occupy contiguous slots and their ranks differ, so sorting the unresolved subset keeps every
        # suffix inside its old group's slots, and a new group never spans two old groups: its rank is the slot of
        # its first member. All ranks change at once (they were all read above).
        sa[unresolved] = pos
        heads, single = _runs(packed, index_dtype)
        del packed
        rank[pos] = unresolved[heads]
        del heads, pos
        bar.update(int(single.sum()))
        unresolved = unresolved[~single]
        h *= 2
    bar.close()
    return sa


def brute_force_suffix_array(tokens, separator: int | None = None) -> np.ndarray:
    """Reference oracle: sort the suffixes as Python lists (tests only; quadratic). ``separator`` sorts below every
    other id."""
    t = [-1 if int(x) == separator else int(x) for x in np.asarray(tokens).tolist()]
    return np.array(sorted(range(len(t)), key=lambda i: t[i:]), dtype=np.int64)


class SuffixArray:
    """A corpus with its suffix array: ``find`` occurrence ranges, ``continuations`` after a pattern.

    Build with ``SuffixArray.build(tokens)`` (``separator=`` for a separator-first array, the order of a ``"rest"``
    store); ``to_arrays`` / ``from_arrays`` are what a ``"rest"`` datastore holds (``draftless.stores.indexes``
    writes it and maps it back). ``match`` and ``continuations`` are what ``RestDrafter`` asks of an index, and
    ``ShardedSuffixArray`` answers them alike over several arrays.
    """

    kind = KIND  # the datastore kind of its arrays

    def __init__(self, tokens: np.ndarray, sa: np.ndarray, store_meta: dict | None = None,
                 separator: int | None = None):
        self.tokens = tokens
        self.sa = sa
        self.store_meta = store_meta
        if separator is None and (store_meta or {}).get("sa_order") == SEPARATOR_FIRST:
            separator = store_meta["separator_id"]
        # the separator of a separator-first array (it ends every match); None: a plain array
        self.separator = None if separator is None else int(separator)

    @classmethod
    def build(cls, tokens, progress: bool = False, method: str | None = None,
              separator: int | None = None) -> SuffixArray:
        tokens = as_token_array(tokens)
        return cls(tokens, build_suffix_array(tokens, progress=progress, method=method, separator=separator),
                   separator=separator)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def separator_id(self) -> int | None:
        """The document separator: drafts never include it (the store's ``separator_id``, else the array's)."""
        sep = (self.store_meta or {}).get("separator_id", self.separator)
        return None if sep is None else int(sep)

    @property
    def _sep(self) -> int:
        return -1 if self.separator is None else self.separator

    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.sa.nbytes)

    # ------------------------------------------------------------------------------------------ queries
    def find(self, pattern) -> tuple[int, int]:
        """``(lo, hi)``: the slots of ``sa`` whose suffixes start with ``pattern`` (``hi - lo`` occurrences). In a
        separator-first array a pattern holding the separator occurs nowhere (matches stay inside documents)."""
        q = np.ascontiguousarray(pattern, dtype=np.int64)
        if q.ndim != 1:
            raise ValueError("pattern must be 1-D")
        if len(q) == 0:
            return 0, len(self)
        if self.separator is not None and (q == self.separator).any():
            return 0, 0
        lo, hi = K.sa_range(self.tokens, self.sa, q, 0, len(q), self._sep)
        return int(lo), int(hi)

    def count(self, pattern) -> int:
        lo, hi = self.find(pattern)
        return hi - lo

    def positions(self, pattern, limit: int | None = None) -> np.ndarray:
        """Start positions of ``pattern`` (in suffix order); at most ``limit``, sampled evenly over the range."""
        lo, hi = self.find(pattern)
        return self.sa[self.sample_slots(lo, hi, limit)].astype(np.int64)

    @staticmethod
    def sample_slots(lo: int, hi: int, limit: int | None) -> np.ndarray:
        n = hi - lo
        if limit is None or n <= limit:
            return np.arange(lo, hi, dtype=np.int64)
        return lo + (np.arange(limit, dtype=np.int64) * n) // limit

    def query_tail(self, context, max_len: int) -> np.ndarray:
        """The last ``max_len`` tokens of ``context`` that a match may use, as a fresh int64 array: in a
        separator-first array, only those after the context's last separator."""
        tail = np.array(np.asarray(context)[-max_len:] if max_len > 0 else [], dtype=np.int64)
        if self.separator is not None:
            hits = np.flatnonzero(tail == self.separator)
            if len(hits):
                tail = tail[hits[-1] + 1:].copy()
        return tail

    def longest_suffix_match(self, context, min_len: int = 2, max_len: int = 16) -> tuple[int, int, int]:
        """``(m, lo, hi)`` for the longest ``context[-m:]`` (``min_len <= m <= max_len``) found; ``m = 0``: none."""
        m, (lo, hi) = self.match(self.query_tail(context, max_len), min_len, max_len)
        return m, lo, hi

    def match(self, tail: np.ndarray, min_len: int, max_len: int) -> tuple[int, tuple[int, int]]:
        """``(m, (lo, hi))``: the longest ``tail[-m:]`` found (``query_tail`` gives ``tail``), with its slot range."""
        m, lo, hi = K.longest_suffix_match(self.tokens, self.sa, tail, int(min_len), int(max_len), self._sep)
        return int(m), (int(lo), int(hi))

    def continuations(self, m: int, where: tuple[int, int], limit: int | None, max_depth: int, max_nodes: int):
        """Trie of what follows the occurrences ``where`` of a match of length ``m`` (``match``'s answer), at most
        ``limit`` of them sampled evenly over the range: ``(tokens, parents, counts (float), depths, n_sampled)``.
        Paths stop at the separator."""
        slots = self.sample_slots(where[0], where[1], limit)
        starts = self.sa[slots].astype(np.int64) + m
        sep = self.separator_id
        tok, par, w, depth = K.continuation_trie(self.tokens, starts, np.ones(len(starts)), int(max_depth),
                                                 -1 if sep is None else sep, int(max_nodes))
        return tok, par, w, depth, len(starts)

    def continuation_counts(self, pattern, max_depth: int, limit: int | None = None,
                            stop_token: int | None = None, max_nodes: int = 4096):
        """Trie of what follows the occurrences of ``pattern``: ``(tokens, parents, counts, depths)``.

        Node 0 is the root (all sampled occurrences); ``counts[i]`` is how many occurrences continue with the path to
        node ``i``. Paths stop at ``stop_token`` (not included), at the end of the corpus and after ``max_depth``.
        """
        q = np.ascontiguousarray(pattern, dtype=np.int64)
        lo, hi = self.find(q)
        starts = self.sa[self.sample_slots(lo, hi, limit)].astype(np.int64) + len(q)
        tok, par, w, depth = K.continuation_trie(self.tokens, starts, np.ones(len(starts)), int(max_depth),
                                                 -1 if stop_token is None else int(stop_token), int(max_nodes))
        return tok, par, np.rint(w).astype(np.int64), depth

    # ------------------------------------------------------------------------------------------ as arrays
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """``{"tokens", "sa"}`` and ``{"sa_dtype"}`` (plus ``"sa_order"`` and ``"separator_id"`` for a
        separator-first array): what a ``"rest"`` datastore holds (``draftless.stores.indexes.save_index``)."""
        meta = {"sa_dtype": self.sa.dtype.str}
        if self.separator is not None:
            meta.update(sa_order=SEPARATOR_FIRST, separator_id=self.separator)
        return {"tokens": self.tokens, "sa": self.sa}, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> SuffixArray:
        """A suffix array over ``arrays`` as ``to_arrays`` gives them (used in place); ``meta`` (a store's
        ``meta.json``) is kept as ``store_meta``. ``ValueError`` when arrays are missing or inconsistent."""
        missing = [name for name in FORMAT_ARRAYS if name not in arrays]
        if missing:
            raise ValueError(f"suffix-array store lacks arrays {missing}")
        tokens, sa = arrays["tokens"], arrays["sa"]
        meta = dict(meta or {})
        n = int(meta.get("n_tokens", len(tokens)))
        if not (tokens.shape == (n,) and sa.shape == (n,) and tokens.dtype == np.int32
                and sa.dtype in (np.dtype(np.int32), np.dtype(np.int64))):
            raise ValueError("suffix-array arrays have inconsistent shapes or dtypes")
        if n and not (0 <= int(sa[0]) < n and 0 <= int(sa[-1]) < n):
            raise ValueError("suffix array holds positions outside the corpus")
        order = meta.get("sa_order", PLAIN)
        if order not in (PLAIN, SEPARATOR_FIRST):
            raise ValueError(f"suffix array in order {order!r}; this draftless reads {PLAIN!r} and {SEPARATOR_FIRST!r}")
        if order == SEPARATOR_FIRST and not isinstance(meta.get("separator_id"), int):
            raise ValueError("a separator-first suffix array needs its separator_id")
        return cls(tokens, sa, meta)

    def __repr__(self) -> str:
        order = "plain" if self.separator is None else f"separator {self.separator} first"
        return f"SuffixArray(n_tokens={len(self):,}, sa={self.sa.dtype}, {order})"
