"""``dense``: DReSD-style drafting by nearest neighbours of the target's own hidden state (training-free, lossless).

The verification pass already computes the last-layer hidden state of every tree node (the drafter sets
``wants_hidden_states``). The state at the last accepted node predicts the token after it, which is the step's bonus
token and the root of the next draft. So the query for the next draft costs one PCA projection:

1. ``q = normalise(PCA(step.hidden[step.accepted[-1]]))``;
2. search the store's FAISS index for the ``k`` nearest keys; key ``j`` is the state after corpus token
   ``i = positions[j]`` (``i = j`` in a store whose ids are positions) and its value is token ``i + 1``.
   Neighbours whose value differs from the root (the last committed token) are dropped: they predicted something
   else;
3. the surviving neighbours' continuations ``tokens[i + 2 : i + 2 + max_depth]`` (stopping at the document
   separator) are counted into a trie, each weighted by ``exp((similarity - 1) / temperature)``, and scored::

       score(node) = weight(node) / (weight(all kept) + smoothing * max weight) * depth_decay ** (depth - 1)

Optionally (``online=True``) the keys of this session's committed tokens (their hidden states arrive with every
step's feedback) go into a capped ``OnlineDenseIndex`` that is searched the same way, so a session retrieves from
its own earlier text; the two tries are merged. Before the first feedback there is no query: the draft is root-only.
"""
from __future__ import annotations

import os

import numpy as np

from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree, merge_nonempty, top_of_trie
from ..index.dense_index import DenseStore, OnlineDenseIndex
from ..index.kernels import suffix_array_kernels as K
from ..stores.datastore import DatastoreError
from ..stores.dense_build import model_info
from ..stores.indexes import load_index
from ..tokenizer_identity import tokenizer_identity as _tokenizer_identity


class DenseDrafter(BaseDrafter):
    """Dense-retrieval drafter (see the module docstring).

    - ``store_path``: a ``"dense"`` datastore (``draftless build --kind dense``), a ``DenseStore``, or None for an
      online-only drafter (then ``online_dim`` raw hidden dimensions are used: set ``model`` or ``hidden_size``);
    - ``tokenizer``: refuse a store built with another tokenizer; ``model``: refuse a store built from hidden states
      of another size (a different model's states are meaningless as queries);
    - ``k``: neighbours searched; ``max_depth``: longest continuation; ``temperature``, ``smoothing``,
      ``depth_decay``, ``min_score``: the scoring above; ``min_similarity``: neighbours below it are ignored;
    - ``online``: also index this session's states (``online_capacity`` keys, ring buffer);
    - ``ef_search`` / ``nprobe``: FAISS search effort for HNSW / IVF indexes (None: what the store records, else
      64 / 32).
    """

    name = "dense"
    wants_hidden_states = True

    def __init__(self, store_path: str | os.PathLike | DenseStore | None = None, tokenizer=None, model=None,
                 k: int = 32, *, max_depth: int = 8, temperature: float = 0.1, smoothing: float = 1.0,
                 depth_decay: float = 0.95, min_score: float = 0.02, min_similarity: float = 0.0,
                 online: bool = False, online_capacity: int = 4096, hidden_size: int | None = None,
                 ef_search: int | None = None, nprobe: int | None = None, max_nodes: int = 1024, verify: str = "size",
                 name: str | None = None):
        if name is not None:
            self.name = name
        self.store: DenseStore | None
        if isinstance(store_path, DenseStore):
            self.store = store_path
        elif store_path is not None:
            identity = _tokenizer_identity(tokenizer) if tokenizer is not None else None
            self.store = load_index(DenseStore, store_path, tokenizer_identity=identity, verify=verify,
                                    ef_search=ef_search, nprobe=nprobe)
        else:
            self.store = None
        if model is not None:
            hidden_size = model_info(model)["hidden_size"]
        if self.store is not None:
            if hidden_size is not None and int(hidden_size) != self.store.hidden_size:
                raise DatastoreError(
                    f"dense store {getattr(self.store, 'store_meta', {}).get('model', {}).get('name', '')!r} holds "
                    f"hidden states of size {self.store.hidden_size}, the model's are {hidden_size}: rebuild the "
                    f"store with this model")
            hidden_size = self.store.hidden_size
        elif not online:
            raise ValueError("DenseDrafter needs a store or online=True")
        elif hidden_size is None:
            raise ValueError("an online-only DenseDrafter needs model= or hidden_size=")
        self.hidden_size = int(hidden_size)
        sep = self.store.separator_id if self.store is not None else None
        self._separator = -1 if sep is None else int(sep)
        self.k = int(k)
        self.max_depth = int(max_depth)
        self.temperature = float(temperature)
        self.smoothing = float(smoothing)
        self.depth_decay = float(depth_decay)
        self.min_score = float(min_score)
        self.min_similarity = float(min_similarity)
        self.max_nodes = int(max_nodes)
        key_dim = self.store.dim if self.store is not None else self.hidden_size
        self.online = OnlineDenseIndex(key_dim, online_capacity) if online else None
        self._session = np.zeros(0, dtype=np.int64)  # committed tokens of this request (online values)
        self._query: np.ndarray | None = None  # projected key predicting context[_query_len - 1]
        self._query_len = -1
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the compiled kernels for this store's array types now, not in the first step."""
        if self.store is not None and len(self.store):
            K.continuation_trie(self.store.tokens, np.zeros(1, dtype=np.int64), np.ones(1), 2, self._separator, 4)
        K.continuation_trie(np.zeros(2, dtype=np.int64), np.zeros(1, dtype=np.int64), np.ones(1), 2, -1, 4)

    # ------------------------------------------------------------------------------------------ state
    def begin(self, prompt_ids: np.ndarray) -> None:
        self._query = None
        self._query_len = -1
        self._session = np.asarray(prompt_ids, dtype=np.int64).reshape(-1).copy()
        if self.online is not None:
            self.online.reset()

    def _keys(self, states: np.ndarray) -> np.ndarray:
        if self.store is not None:
            return self.store.project(states)
        x = np.atleast_2d(np.asarray(states, dtype=np.float32))
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def feedback(self, step: StepFeedback) -> None:
        context = np.asarray(step.context, dtype=np.int64)
        self._session = context.copy() if self.online is not None else self._session
        if step.hidden is None:
            self._query = None
            return
        accepted = np.asarray(step.accepted, dtype=np.int64)
        states = step.hidden[accepted]
        states = states.float().cpu().numpy() if hasattr(states, "cpu") else np.asarray(states, dtype=np.float32)
        keys = self._keys(states)
        self._query = keys[-1]
        self._query_len = len(context)
        if self.online is not None:
            # accepted node j sits at position (len before the step - 1) + j of the context
            first = len(context) - len(step.new_tokens) - 1
            self.online.add(keys, first + np.arange(len(accepted)))

    # ------------------------------------------------------------------------------------------ drafting
    def _score(self, root: int, tokens: np.ndarray, starts: np.ndarray, sims: np.ndarray, budget: int,
               stop: int) -> DraftTree:
        if len(starts) == 0:
            return DraftTree.root_only(root)
        weights = np.exp((sims.astype(np.float64) - 1.0) / self.temperature)
        tok, par, wsum, depth = K.continuation_trie(tokens, starts, weights, self.max_depth, stop, self.max_nodes)
        if len(tok) <= 1:
            return DraftTree.root_only(root)
        scores = wsum / (wsum[0] + self.smoothing * weights.max()) * self.depth_decay ** np.maximum(depth - 1, 0)
        return top_of_trie(root, tok, par, scores, budget, self.min_score, self.name)

    def _static_tree(self, root: int, budget: int) -> DraftTree:
        store = self.store
        sims, pos = store.search_positions(self._query[None], self.k)
        sims, pos = sims[0], pos[0]
        found = pos >= 0  # search_positions keeps every found position inside tokens[: -1]
        value = np.where(found, np.asarray(store.tokens)[np.where(found, pos + 1, 0)], -1)
        keep = found & (value == root) & (sims >= self.min_similarity)
        starts = pos[keep] + 2
        return self._score(root, store.tokens, starts, sims[keep], budget, self._separator)

    def _online_tree(self, context: np.ndarray, root: int, budget: int) -> DraftTree:
        sims, pos = self.online.search(self._query, self.k)
        session = self._session
        n = len(session)
        valid = (pos + 2 < n) & (sims >= self.min_similarity)
        pos, sims = pos[valid], sims[valid]
        keep = session[pos + 1] == root
        return self._score(root, session, pos[keep] + 2, sims[keep], budget, -1)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        root = int(context[-1])
        if self._query is None or self._query_len != len(context):
            return DraftTree.root_only(root)
        trees = []
        if self.store is not None and len(self.store):
            trees.append(self._static_tree(root, budget))
        if self.online is not None:
            trees.append(self._online_tree(context, root, budget))
        return merge_nonempty(root, trees, budget)
