"""Dense retrieval stores (DReSD): the target's own hidden states as keys, the corpus tokens after them as values.

This module holds the index (``DenseStore``, ``OnlineDenseIndex``, FAISS helpers); building one from a corpus is
``draftless.stores.dense_build`` and its files are ``draftless.stores.indexes``'s. Build (``build_dense``, kind
``"dense"``):

1. run the target model over the corpus token stream in fixed-length windows (``window`` tokens, consecutive windows
   overlap by ``overlap`` tokens so every kept position has at least ``overlap`` tokens of context) and take the
   last-layer hidden state at every position, exactly as the engine's verification pass returns it
   (``output_hidden_states=True``, ``hidden_states[-1]``);
2. fit a PCA on the first ``pca_sample`` hidden states (numpy SVD), project every state to ``dim`` dimensions and
   L2-normalise it (inner product = cosine similarity);
3. index the keys with FAISS (``index``: ``"ivf"`` default (IVF-Flat, ``4 sqrt(m)`` lists, ``nprobe`` 32),
   ``"hnsw"`` (M 32, efSearch 64), exact ``"flat"``, or ``"ivfpq"``: IVF with product-quantised residuals, the
   compressed kind, below). On 298k GSM8K keys of dim 96, recall@32 against exact search is 0.985 (IVF,
   0.15 ms/query) and 0.983 (HNSW, 0.17 ms/query), but IVF is 40% smaller and builds 3x faster.

``"ivfpq"`` (``faiss.IndexIVFPQ``, inner product, behind a learned OPQ rotation): each key is stored as ``pq_m``
one-byte codes of its residual to its list's centroid (``pq_m`` 16 by default, the largest divisor of ``dim`` up to
it; fewer bits per code when the training sample is too small for 256 centroids), and its FAISS id *is* its corpus
position (``add_with_ids``), so the store has no ``positions.npy``: on disk a key costs its code, FAISS's 8-byte id
and the corpus token (4 bytes), 28 bytes at ``pq_m`` 16, plus fixed costs (PCA, OPQ rotation, coarse centroids, PQ
codebooks: about 0.4 MB at dim 96 and hidden size 576) that a large corpus amortises. ``meta.json`` records
``"key_ids": "positions"`` and the search effort (``"search": {"nprobe": ...}``); ``docs/dense-stores.md`` has the
measurements behind the defaults.

Key ``j`` is the hidden state after reading corpus token ``i = positions[j]``: it predicts token ``i + 1`` (its
*value*), and the tokens from ``i + 2`` on are the draft continuation once ``i + 1`` has been committed. Positions
whose next token is the document separator (or the end) are not indexed.

Store layout: ``tokens.npy`` int32[n], ``positions.npy`` int32[m] (not in a ``"key_ids": "positions"`` store, whose
FAISS ids are the positions), ``pca_components.npy`` float32[dim, hidden],
``pca_mean.npy`` float32[hidden], ``index.npy`` uint8[bytes] (the FAISS index serialised with
``faiss.serialize_index``: saved as an array so it goes through the datastore's atomic write and its
size/header/sha256 checks like every other file). ``meta.json`` records the model (name, hidden size, layers), the
index type and its search parameters (``"search"``; a store without them is searched with the defaults below).

``OnlineDenseIndex`` is the in-session counterpart: a capped ring buffer of keys from the verification pass's hidden
states of committed tokens, searched exactly (a matrix-vector product).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

KIND = "dense"
FORMAT_ARRAYS = ("tokens", "positions", "pca_components", "pca_mean", "index")
INDEX_TYPES = ("hnsw", "ivf", "flat", "ivfpq")
KEY_IDS_POSITIONS = "positions"  # meta["key_ids"] of a store whose FAISS ids are corpus positions (no positions.npy)
DEFAULT_EF_SEARCH = 64
DEFAULT_NPROBE = 32
IVFPQ_M = 16  # bytes of code per key: 4 (token) + 8 (FAISS id) + 16 = 28 bytes per key before fixed costs
IVFPQ_NPROBE = 32
TRAIN_SAMPLE = 100_000  # keys an IVF index is trained on (a seeded sample of larger sets)
# keys the OPQ rotation is learned from (FAISS's default is 65536): on 40k GSM8K keys 16384 give the same recall@32
# (0.634 against 0.633) in 40 s instead of over two minutes
OPQ_TRAIN = 16384


# ---------------------------------------------------------------------------------------------- PCA + index
def project(states: np.ndarray, components: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """PCA-project and L2-normalise: float32[N, dim] keys (cosine similarity = inner product)."""
    x = (np.asarray(states, dtype=np.float32) - mean) @ components.T
    x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss():
    """The ``faiss`` module, or an ImportError that says how to get it (dense stores are an extra)."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("dense datastores need FAISS: pip install 'draftless[dense]' (or faiss-cpu)") from exc
    return faiss


def pq_subquantizers(dim: int, pq_m: int = IVFPQ_M) -> int:
    """The largest divisor of ``dim`` that is at most ``pq_m`` (FAISS splits a key into equal sub-vectors)."""
    if pq_m < 1 or dim < 1:
        raise ValueError(f"pq_m and dim must be positive, got pq_m={pq_m}, dim={dim}")
    return max(m for m in range(1, min(int(pq_m), int(dim)) + 1) if dim % m == 0)


def pq_bits(n_train: int, nbits: int = 8) -> int:
    """Bits per PQ code: ``nbits``, fewer when fewer than ``2 ** nbits`` training keys exist (k-means needs at least
    as many points as centroids)."""
    return int(max(1, min(int(nbits), int(np.log2(max(n_train, 2))))))


def make_index(dim: int, kind: str = "ivf", n_keys: int = 0, hnsw_m: int = 32, ef_construction: int = 80,
               nlist: int | None = None, pq_m: int = IVFPQ_M, pq_nbits: int = 8, opq: bool = True):
    """An empty FAISS inner-product index of ``kind`` (IVF needs ``train`` before ``add``). ``ivfpq``: ``pq_m`` codes
    of ``pq_nbits`` (see ``pq_subquantizers`` / ``pq_bits`` for how they are fitted to ``dim`` and ``n_keys``),
    behind a learned rotation (OPQ) unless ``opq=False``."""
    faiss = _faiss()

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index
    if kind == "ivf":
        nlist = nlist or max(16, int(4 * np.sqrt(max(n_keys, 1))))
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        # 4 sqrt(m) lists as for IVF-Flat, but no more than make the centroids cost a byte per key: they are the
        # largest fixed cost of a small compressed store
        nlist = nlist or max(16, min(int(4 * np.sqrt(max(n_keys, 1))), n_keys // (4 * dim)))
        nlist = max(1, min(int(nlist), max(n_keys, 1)))  # k-means of the coarse quantizer needs a point per list
        m, nbits = pq_subquantizers(dim, pq_m), pq_bits(min(n_keys, TRAIN_SAMPLE), pq_nbits)
        ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        if not opq:
            return ivf
        # OPQ: PCA keys put most of their variance in the first dimensions, hence in the first sub-quantizers; a
        # learned rotation (dim x dim floats, a fixed cost) spreads it over all of them. Its training quantizer
        # gets the index's bits (FAISS's default of 8 needs 256 training keys).
        rotation = faiss.OPQMatrix(dim, m)
        rotation.max_train_points = OPQ_TRAIN
        training_pq = faiss.ProductQuantizer(dim, m, nbits)
        rotation.pq = training_pq
        rotation.referenced_objects = [training_pq]  # keeps it alive as long as the rotation (SWIG does not)
        return faiss.IndexPreTransform(rotation, ivf)
    raise ValueError(f"unknown index type {kind!r}; choose from {INDEX_TYPES}")


def set_search_params(index, ef_search: int = DEFAULT_EF_SEARCH, nprobe: int = DEFAULT_NPROBE) -> None:
    """Search effort: ``efSearch`` of an HNSW index, ``nprobe`` (lists visited) of an IVF one."""
    faiss = _faiss()

    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = int(ef_search)
    elif (ivf := ivf_of(index)) is not None:
        ivf.nprobe = int(nprobe)


def ivf_of(index):
    """The ``faiss.IndexIVF`` of ``index`` (itself, or inside an OPQ ``IndexPreTransform``), None for other kinds."""
    faiss = _faiss()

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return None


def index_keys(keys: np.ndarray, kind: str = "ivf", ids: np.ndarray | None = None, **kw):
    """A FAISS index of ``kind`` over ``keys`` float32[m, dim], trained (IVF kinds) on at most ``TRAIN_SAMPLE`` of
    them drawn with a fixed seed. ``ids`` int[m]: the FAISS ids of the keys (IVF kinds only; default ``0..m-1``)."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    index = make_index(keys.shape[1], kind, len(keys), **kw)
    if not index.is_trained:
        rng = np.random.default_rng(0)
        sample = keys if len(keys) <= TRAIN_SAMPLE else keys[rng.choice(len(keys), TRAIN_SAMPLE, replace=False)]
        index.train(sample)
    if ids is None:
        index.add(keys)
    elif ivf_of(index) is not None:
        index.add_with_ids(keys, np.ascontiguousarray(ids, dtype=np.int64))
    else:
        raise ValueError(f"a {kind!r} index numbers its keys 0..m-1; ids need an IVF kind")
    return index


# ---------------------------------------------------------------------------------------------- the store
class DenseStore:
    """An opened (or freshly built) dense store. ``search(queries, k)`` returns ``(similarities, key ids)``;
    ``search_positions(queries, k)`` returns ``(similarities, corpus positions)``: the position whose hidden state
    each key is (``positions[id]``, or the id itself when ``positions`` is None: a ``"key_ids": "positions"``
    store, see the module docstring).

    ``ef_search`` / ``nprobe``: search effort; None takes the store's recorded ``meta["search"]``, else the
    defaults (``DEFAULT_EF_SEARCH``, ``DEFAULT_NPROBE``)."""

    kind = KIND  # the datastore kind of its arrays

    def __init__(self, tokens: np.ndarray, positions: np.ndarray | None, components: np.ndarray, mean: np.ndarray,
                 index, store_meta: dict | None = None, ef_search: int | None = None, nprobe: int | None = None):
        self.tokens = tokens
        self.positions = positions
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.index = index
        self.store_meta = dict(store_meta or {})
        if positions is None:
            self.store_meta["key_ids"] = KEY_IDS_POSITIONS
        recorded = self.store_meta.get("search") or {}
        self.search_params = {
            "ef_search": int(ef_search if ef_search is not None else recorded.get("ef_search", DEFAULT_EF_SEARCH)),
            "nprobe": int(nprobe if nprobe is not None else recorded.get("nprobe", DEFAULT_NPROBE))}
        set_search_params(index, **self.search_params)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.components.shape[1])

    @property
    def separator_id(self) -> int | None:
        sep = self.store_meta.get("separator_id")
        return None if sep is None else int(sep)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def project(self, states: np.ndarray) -> np.ndarray:
        return project(np.atleast_2d(states), self.components, self.mean)

    def search(self, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search projected ``keys`` float32[q, dim]: ``(similarities float32[q, k], ids int64[q, k])``, ids -1 where
        fewer than ``k`` were found."""
        return self.index.search(np.ascontiguousarray(keys, dtype=np.float32), int(k))

    def search_positions(self, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``search`` with the ids mapped to corpus positions: ``(similarities float32[q, k], positions int64[q,
        k])``, -1 where nothing was found (or an id falls outside the corpus: a damaged store drafts nothing rather
        than reading past the tokens)."""
        sims, ids = self.search(keys, k)
        ids = ids.astype(np.int64, copy=False)
        if self.positions is None:
            pos = ids.copy()
        else:
            valid = (ids >= 0) & (ids < len(self.positions))
            pos = np.where(valid, np.asarray(self.positions)[np.where(valid, ids, 0)], -1).astype(np.int64)
        pos[(pos < 0) | (pos >= len(self.tokens) - 1)] = -1
        return sims, pos

    def indexed_positions(self) -> np.ndarray:
        """int64[m]: the corpus positions that have a key, ascending (read from the index's lists for a store whose
        ids are positions)."""
        if self.positions is not None:
            return np.asarray(self.positions, dtype=np.int64)
        faiss = _faiss()

        invlists = ivf_of(self.index).invlists
        parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                 for i in range(invlists.nlist) if invlists.list_size(i)]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def keys(self) -> np.ndarray:
        """float32[m, dim]: every key as the index holds it (decoded codes for ``ivfpq``), in the order of
        ``indexed_positions()``."""
        faiss = _faiss()

        if (ivf := ivf_of(self.index)) is not None:
            if self.positions is None:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
                return self.index.reconstruct_batch(self.indexed_positions())
            ivf.make_direct_map()
        return self.index.reconstruct_n(0, self.index.ntotal)

    # ------------------------------------------------------------------------------------------ as arrays
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """The arrays of a ``"dense"`` datastore (``FORMAT_ARRAYS``, less ``positions`` when the ids are positions;
        the FAISS index serialised to uint8) and its meta: ``store_meta`` plus the key count, dimensions, index type
        and search parameters (``draftless.stores.indexes``)."""
        faiss = _faiss()

        ivf = ivf_of(self.index)
        if ivf is not None and ivf.direct_map.type != faiss.DirectMap.NoMap:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # keys() built it; it is not worth its bytes
        blob = faiss.serialize_index(self.index)
        meta = dict(self.store_meta)
        meta.update({"n_keys": int(self.index.ntotal), "dim": self.dim, "hidden_size": self.hidden_size,
                     "faiss_index": type(self.index).__name__, "search": dict(self.search_params)})
        arrays = {"tokens": self.tokens, "pca_components": self.components, "pca_mean": self.mean,
                  "index": np.asarray(blob, dtype=np.uint8)}
        if self.positions is not None:
            arrays["positions"] = self.positions
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None, ef_search: int | None = None,
                    nprobe: int | None = None) -> DenseStore:
        """A dense store over ``arrays`` as ``to_arrays`` gives them: the corpus tokens and positions are used in
        place (memory-mapped ones stay mapped), the FAISS index is deserialised into memory. ``ValueError`` when
        arrays are missing, inconsistent or the index does not deserialise."""
        faiss = _faiss()

        meta = dict(meta) if meta is not None else {}
        ids_are_positions = meta.get("key_ids") == KEY_IDS_POSITIONS
        needed = [name for name in FORMAT_ARRAYS if not (ids_are_positions and name == "positions")]
        missing = [name for name in needed if name not in arrays]
        if missing:
            raise ValueError(f"dense store lacks arrays {missing}")
        a = arrays
        positions = None if ids_are_positions else a["positions"]
        n = int(meta.get("n_tokens", len(a["tokens"])))
        comps, mean = a["pca_components"], a["pca_mean"]
        ok = (a["tokens"].shape == (n,) and a["tokens"].dtype == np.int32
              and (positions is None or (positions.ndim == 1 and positions.dtype == np.int32))
              and comps.ndim == 2 and comps.dtype == np.float32
              and mean.shape == (comps.shape[1],) and mean.dtype == np.float32 and a["index"].dtype == np.uint8
              and a["index"].ndim == 1)
        if not ok:
            raise ValueError("dense store arrays have inconsistent shapes or dtypes")
        try:
            index = faiss.deserialize_index(np.ascontiguousarray(a["index"]))
        except Exception as exc:  # faiss raises RuntimeError with its own message
            raise ValueError(f"the FAISS index does not deserialise ({exc}); the store is corrupt") from exc
        n_keys = len(positions) if positions is not None else int(meta.get("n_keys", -1))
        what = "positions" if positions is not None else "meta n_keys"
        if index.d != comps.shape[0] or index.ntotal != n_keys:
            raise ValueError(f"FAISS index ({index.ntotal} keys of dim {index.d}) does not match "
                             f"{what} ({n_keys}) / PCA dim ({comps.shape[0]})")
        if ids_are_positions and ivf_of(index) is None:
            raise ValueError(f"a store whose ids are positions needs an IVF index, not {type(index).__name__}")
        if positions is not None and len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= n):
            raise ValueError("key positions fall outside the corpus")
        return cls(a["tokens"], positions, comps, mean, index, meta, ef_search, nprobe)

    def __repr__(self) -> str:
        return (f"DenseStore(n_tokens={len(self.tokens):,}, keys={len(self):,}, dim={self.dim}, "
                f"index={type(self.index).__name__})")


# ---------------------------------------------------------------------------------------------- online store
class OnlineDenseIndex:
    """Keys added during a session (ring buffer of ``capacity``; exact inner-product search).

    ``add(keys, positions)``: normalised float32[m, d] keys of session positions; ``search(q, k)`` returns
    ``(similarities, positions)``, best first.
    """

    def __init__(self, dim: int, capacity: int = 4096):
        self.dim = int(dim)
        self.capacity = int(capacity)
        self.keys = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self.pos = np.full(self.capacity, -1, dtype=np.int64)
        self.size = 0
        self.head = 0

    def reset(self) -> None:
        self.size = 0
        self.head = 0
        self.pos[:] = -1

    def add(self, keys: np.ndarray, positions: np.ndarray) -> None:
        keys = np.atleast_2d(np.asarray(keys, dtype=np.float32))
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        for key, p in zip(keys[-self.capacity:], positions[-self.capacity:]):
            self.keys[self.head] = key
            self.pos[self.head] = p
            self.head = (self.head + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.size == 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        sims = self.keys[: self.size] @ np.asarray(query, dtype=np.float32).reshape(-1)
        k = min(int(k), self.size)
        top = np.argpartition(-sims, k - 1)[:k] if k < self.size else np.arange(self.size)
        top = top[np.argsort(-sims[top], kind="stable")]
        return sims[top], self.pos[top]
