"""``rest``: REST-style retrieval drafting from a suffix array over a corpus (training-free, lossless once verified).

Each step: find the longest suffix of the context (at most ``max_suffix`` tokens, at least ``min_suffix``) that occurs
in the corpus (binary search over the match length; each probe is a suffix-array binary search), take up to
``max_occurrences`` of its occurrences (evenly spaced over the suffix-array range when there are more), and count the
tokens that follow them into a trie. A node's score estimates that it is reached and accepted::

    score(node) = count(node) / (n_occurrences + smoothing) * m / (m + match_prior) * depth_decay ** (depth - 1)

the fraction of occurrences that continue through the node, discounted for few occurrences (``smoothing``), short
matches (``m`` = match length; ``match_prior`` tokens of match give 1/2) and depth. Scores never increase along a
path, so the best ``budget`` nodes form a connected tree. If the longest match has no usable continuation (corpus
end, document separator) the drafter backs off to shorter suffixes. The store's document separator is never drafted.

Stores built since sharding came are separator-first (``draftless.index.suffix_array``): a match uses only the
context after its last separator and never spans two documents. A sharded store (``draftless build --kind rest
--shards N``) is opened as one ``ShardedSuffixArray``, every shard memory-mapped, and drafts the same trees as one
store over the same documents.
"""
from __future__ import annotations

import os

import numpy as np

from ..engine.protocol import BaseDrafter
from ..engine.tree import DraftTree, top_of_trie
from ..index.sharded_suffix_array import ShardedSuffixArray
from ..index.suffix_array import SuffixArray
from ..stores.sharded import load_rest_index
from ..tokenizer_identity import tokenizer_identity as _tokenizer_identity


class RestDrafter(BaseDrafter):
    """Suffix-array retrieval drafter (see the module docstring).

    - ``store_path``: a ``"rest"`` datastore (``draftless build --kind rest``; a sharded one is opened as one index),
      or a built ``SuffixArray`` / ``ShardedSuffixArray``;
    - ``tokenizer``: the target's tokenizer; when given, a store built with another tokenizer is refused;
    - ``max_suffix`` / ``min_suffix``: longest / shortest context suffix looked up;
    - ``max_occurrences``: occurrences counted per step (sampled evenly across the range when more);
    - ``max_depth``: longest drafted continuation; ``backoff``: shorter suffixes tried when a match yields nothing;
    - ``smoothing``, ``match_prior``, ``depth_decay``, ``min_score``: the scoring above.
    """

    name = "rest"

    def __init__(self, store_path: str | os.PathLike | SuffixArray | ShardedSuffixArray, tokenizer=None,
                 max_suffix: int = 16, min_suffix: int = 2, max_occurrences: int = 64, *, max_depth: int = 8,
                 backoff: int = 2,
                 smoothing: float = 1.0, match_prior: float = 2.0, depth_decay: float = 0.95,
                 min_score: float = 0.02, max_nodes: int = 1024, verify: str = "size", name: str | None = None):
        if name is not None:
            self.name = name
        if isinstance(store_path, (SuffixArray, ShardedSuffixArray)):
            self.sa = store_path
        else:
            identity = _tokenizer_identity(tokenizer) if tokenizer is not None else None
            self.sa = load_rest_index(store_path, tokenizer_identity=identity, verify=verify)
        self.max_suffix = int(max_suffix)
        self.min_suffix = max(1, int(min_suffix))
        self.max_occurrences = int(max_occurrences)
        self.max_depth = int(max_depth)
        self.backoff = int(backoff)
        self.smoothing = float(smoothing)
        self.match_prior = float(match_prior)
        self.depth_decay = float(depth_decay)
        self.min_score = float(min_score)
        self.max_nodes = int(max_nodes)
        self.last_match = 0  # match length of the last draft (0: none), for diagnostics
        # load the compiled kernels for this store's array types now, not in the first step
        arrays = self.sa.shards if isinstance(self.sa, ShardedSuffixArray) else [self.sa]
        first = next((a for a in arrays if len(a) >= 2), None)
        if first is not None:
            self.draft(np.asarray(first.tokens[:2], dtype=np.int64), 4)

    def _tree_for(self, root: int, m: int, where, budget: int) -> DraftTree:
        tok, par, counts, depth, n_sampled = self.sa.continuations(m, where, self.max_occurrences, self.max_depth,
                                                                   self.max_nodes)
        if len(tok) <= 1:
            return DraftTree.root_only(root)
        reliability = m / (m + self.match_prior)
        scores = counts / (n_sampled + self.smoothing) * reliability * self.depth_decay ** np.maximum(depth - 1, 0)
        return top_of_trie(root, tok, par, scores, budget, self.min_score, self.name)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        root = int(context[-1])
        tail = self.sa.query_tail(context, self.max_suffix)  # a writable int64 copy: one kernel signature
        max_len = len(tail)
        self.last_match = 0
        for _ in range(self.backoff + 1):
            m, where = self.sa.match(tail, self.min_suffix, max_len)
            if m == 0:
                break
            tree = self._tree_for(root, m, where, budget)
            if len(tree) > 1:
                self.last_match = m
                return tree
            max_len = m - 1
        return DraftTree.root_only(root)
