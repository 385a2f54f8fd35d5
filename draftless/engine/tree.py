"""``DraftTree``: a tree of guessed tokens rooted at the last committed token.

A tree is three aligned arrays (plus which sources proposed each node):

- ``tokens``  int64[n]   token id of each node; node 0 is the root (the last committed token, not a guess);
- ``parents`` int32[n]   index of each node's parent, ``parents[0] == -1`` and ``parents[i] < i`` (topological order);
- ``scores``  float32[n] the proposer's estimate that the node is *reached and accepted* (root = 1). Drafters
  score cumulatively along a path, so scores normally never increase from a parent to its child; nothing enforces
  it (``validate`` does not check it, ``from_paths`` takes the scores it is given). ``merge`` keeps the property:
  a merged node takes the highest of its scores, and in every tree its parent scored at least as much. Pruning
  keeps trees connected either way; ``budget.best_tree_size`` assumes the property for its size estimate;
- ``source_mask`` uint32[n] bit ``b`` set when ``source_names[b]`` proposed the node (fusion ORs them).

Everything else (depths, ancestor mask, paths) derives from ``parents``. Children of a node carry distinct tokens.
"""
from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DraftTree:
    tokens: np.ndarray
    parents: np.ndarray
    scores: np.ndarray
    source_mask: np.ndarray
    source_names: tuple[str, ...] = ()
    _depths: np.ndarray | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def root_only(root_token: int) -> DraftTree:
        """The "no guess" tree: verifying it decodes exactly one token."""
        return DraftTree(
            tokens=np.array([root_token], dtype=np.int64),
            parents=np.array([-1], dtype=np.int32),
            scores=np.ones(1, dtype=np.float32),
            source_mask=np.zeros(1, dtype=np.uint32),
        )

    @staticmethod
    def from_chain(root_token: int, chain: Sequence[int], scores: Sequence[float] | None = None,
                   source: str = "") -> DraftTree:
        """A single path ``root -> chain[0] -> chain[1] ...``; ``scores`` are per-node cumulative scores."""
        return DraftTree.from_paths(root_token, [list(chain)], None if scores is None else [list(scores)], source)

    @staticmethod
    def from_arrays(root_token: int, tokens, parents, scores, source: str = "",
                    depths: np.ndarray | None = None) -> DraftTree:
        """A single-source tree from aligned node arrays (a numba kernel's output, a ``Trie``'s lists).

        ``tokens`` int[n], ``parents`` int[n] (topological: ``parents[i] < i``), ``scores`` float[n], optionally
        ``depths`` int[n] when the caller already knows them. Node 0 is the root whatever the arrays hold there:
        its token becomes ``root_token``, its parent -1 and its score 1. Every other node is attributed to
        ``source`` (to none when ``source`` is empty). Sibling tokens must already be distinct. The arrays are
        copied. One node or none gives the root-only tree.
        """
        n = len(tokens)
        if n <= 1:
            return DraftTree.root_only(root_token)
        node_tokens = np.array(tokens, dtype=np.int64)
        node_tokens[0] = root_token
        node_parents = np.array(parents, dtype=np.int32)
        node_parents[0] = -1
        node_scores = np.array(scores, dtype=np.float32)
        node_scores[0] = 1.0
        mask = np.full(n, 1 if source else 0, dtype=np.uint32)
        mask[0] = 0
        return DraftTree(node_tokens, node_parents, node_scores, mask, (source,) if source else (),
                         None if depths is None else np.asarray(depths, dtype=np.int32))

    @staticmethod
    def from_paths(
        root_token: int,
        paths: Sequence[Sequence[int]],
        path_scores: Sequence[Sequence[float]] | None = None,
        source: str = "",
    ) -> DraftTree:
        """A trie of root-to-node token paths (the root token is implicit, not part of the paths).

        ``path_scores[i][j]`` scores the node reached by ``paths[i][:j+1]``; where several paths share a node the
        highest score wins. Without scores every node scores 1.
        """
        trie = Trie(root_token)
        scores = [1.0]
        for i, path in enumerate(paths):
            node = 0
            for j, token in enumerate(path):
                score = 1.0 if path_scores is None else float(path_scores[i][j])
                node, new = trie.child(node, int(token))
                if new:
                    scores.append(score)
                else:
                    scores[node] = max(scores[node], score)
        return DraftTree.from_arrays(root_token, trie.tokens, trie.parents, scores, source)

    # ------------------------------------------------------------------ derived views
    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def root_token(self) -> int:
        return int(self.tokens[0])

    @property
    def depths(self) -> np.ndarray:
        """int32[n]: number of edges from the root (root = 0)."""
        if self._depths is None:
            depths = np.zeros(len(self), dtype=np.int32)
            for i in range(1, len(self)):
                depths[i] = depths[self.parents[i]] + 1
            object.__setattr__(self, "_depths", depths)
        return self._depths

    @property
    def max_depth(self) -> int:
        return int(self.depths.max()) if len(self) else 0

    def ancestor_mask(self) -> np.ndarray:
        """bool[n, n]: ``m[i, j]`` is True when node ``j`` is node ``i`` or one of its ancestors."""
        return ancestor_matrix(self.parents)

    def children(self) -> list[list[int]]:
        """Child indices of every node, in index order."""
        kids: list[list[int]] = [[] for _ in range(len(self))]
        for i in range(1, len(self)):
            kids[self.parents[i]].append(i)
        return kids

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to ``node`` inclusive."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]

    def token_paths(self) -> list[list[int]]:
        """Token sequences (root excluded) of every root-to-leaf path."""
        kids = self.children()
        return [[int(self.tokens[k]) for k in self.path_to(leaf)[1:]] for leaf in range(len(self)) if not kids[leaf]]

    def sources_of(self, node: int) -> list[str]:
        bits = int(self.source_mask[node])
        return [name for b, name in enumerate(self.source_names) if bits >> b & 1]

    def expected_accepted(self) -> float:
        """Expected number of draft tokens accepted, if scores are calibrated probabilities (root excluded)."""
        return float(self.scores[1:].sum())

    # ------------------------------------------------------------------ edits
    def subset(self, keep: np.ndarray) -> DraftTree:
        """The tree restricted to the sorted node indices ``keep`` (must contain 0 and be closed under parents)."""
        keep = np.asarray(keep, dtype=np.int64)
        remap = np.full(len(self), -1, dtype=np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        old_parents = self.parents[keep]
        new_parents = np.where(old_parents >= 0, remap[np.maximum(old_parents, 0)], -1).astype(np.int32)
        if (new_parents[1:] < 0).any():
            raise ValueError("subset is not closed under parents")
        return DraftTree(
            tokens=self.tokens[keep],
            parents=new_parents,
            scores=self.scores[keep],
            source_mask=self.source_mask[keep],
            source_names=self.source_names,
        )

    def best_path_indices(self) -> np.ndarray:
        """Sorted node indices of the root-to-leaf path whose scores sum highest (int64[d + 1], root first): with
        calibrated scores, the single chain expected to commit the most tokens. Ties go to the lower index."""
        n = len(self)
        best = self.scores.astype(np.float64).copy()  # best path sum from each node down
        best[0] = 0.0
        child_sum = np.zeros(n, dtype=np.float64)
        best_child = np.full(n, -1, dtype=np.int64)
        for i in range(n - 1, 0, -1):  # children have higher indices than their parents
            best[i] += child_sum[i]
            parent = self.parents[i]
            if best_child[parent] < 0 or best[i] >= child_sum[parent]:
                child_sum[parent], best_child[parent] = best[i], i
        path = [0]
        while best_child[path[-1]] >= 0:
            path.append(int(best_child[path[-1]]))
        return np.asarray(path, dtype=np.int64)

    def pinned_mask(self, sources) -> np.ndarray | None:
        """bool[n]: the nodes any of ``sources`` (names) proposed, which pruning keeps whatever their scores (a
        drafter's ``pinned_sources``: tokens verified for what their logits teach, e.g. a Jacobi window). None
        when no node is pinned. Pinned nodes must be closed under parents (a pinned node's parent is pinned or
        the root), as a pinned source's own chain is."""
        bits = 0
        for name in sources:
            if name in self.source_names:
                bits |= 1 << self.source_names.index(name)
        if not bits:
            return None
        mask = (self.source_mask & np.uint32(bits)) != 0
        mask[0] = False
        return mask if mask.any() else None

    def prune_indices(self, budget: int, max_depth: int | None = None,
                      pinned: np.ndarray | None = None) -> np.ndarray:
        """Sorted indices of the nodes ``prune`` keeps (see there)."""
        budget = max(1, int(budget))
        depth_ok = None if max_depth is None else self.depths <= max_depth
        n_pinned = 0 if pinned is None else int(pinned.sum())
        if len(self) <= budget + n_pinned and (depth_ok is None or depth_ok.all()):
            return np.arange(len(self))
        kids = self.children()
        chosen = [0]
        extra: list[int] = []  # pinned nodes taken: outside the budget
        frontier: list[tuple[float, int]] = []

        def push_children(node: int) -> None:
            for c in kids[node]:
                if depth_ok is not None and not depth_ok[c]:
                    continue  # its whole subtree is deeper still
                if pinned is not None and pinned[c]:
                    extra.append(c)
                    push_children(c)
                else:
                    heapq.heappush(frontier, (-float(self.scores[c]), c))

        push_children(0)
        while frontier and len(chosen) < budget:
            _, node = heapq.heappop(frontier)
            chosen.append(node)
            push_children(node)
        return np.sort(np.asarray(chosen + extra, dtype=np.int64))

    def prune(self, budget: int, max_depth: int | None = None, pinned: np.ndarray | None = None) -> DraftTree:
        """Keep at most ``budget`` nodes (root included): best-first by score, always a connected tree.

        Nodes deeper than ``max_depth`` are dropped. Ties go to the lower index (the proposer's order).
        ``pinned`` (bool[n], see ``pinned_mask``): nodes kept on top of the budget while within ``max_depth``.
        """
        keep = self.prune_indices(budget, max_depth, pinned)
        return self if len(keep) == len(self) else self.subset(keep)

    def with_source(self, name: str) -> DraftTree:
        """The same tree with every non-root node attributed to the single source ``name``."""
        mask = np.ones(len(self), dtype=np.uint32)
        mask[0] = 0
        return DraftTree(self.tokens, self.parents, self.scores, mask, (name,), self._depths)

    def with_scores(self, scores: np.ndarray) -> DraftTree:
        return DraftTree(self.tokens, self.parents, np.asarray(scores, dtype=np.float32), self.source_mask,
                         self.source_names, self._depths)

    def validate(self) -> None:
        """Raise ``ValueError`` when the arrays break the invariants in the module docstring."""
        n = len(self)
        if n == 0:
            raise ValueError("a draft tree has at least its root")
        for name, arr in (("parents", self.parents), ("scores", self.scores), ("source_mask", self.source_mask)):
            if arr.shape != (n,):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({n},)")
        if self.parents[0] != -1:
            raise ValueError("parents[0] must be -1")
        idx = np.arange(1, n)
        if ((self.parents[1:] < 0) | (self.parents[1:] >= idx)).any():
            raise ValueError("parents[i] must satisfy 0 <= parents[i] < i")
        seen = set()
        for i in range(1, n):
            key = (int(self.parents[i]), int(self.tokens[i]))
            if key in seen:
                raise ValueError(f"node {i} repeats a sibling's token {key[1]}")
            seen.add(key)


class Trie:
    """A trie of token paths under a root, grown one edge at a time: the node lists behind ``from_paths``,
    ``merge`` and the n-gram drafter's continuation tree. Node 0 is the root; nodes are numbered in insertion
    order, so ``parents[i] < i``. Callers keep their per-node values (scores, weights) in lists aligned with
    ``tokens``, appending one when ``child`` reports a new node."""

    def __init__(self, root_token: int):
        self.tokens: list[int] = [int(root_token)]
        self.parents: list[int] = [-1]
        self._index: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def child(self, parent: int, token: int) -> tuple[int, bool]:
        """``(node, is_new)``: the child of ``parent`` holding ``token``, added if it was missing."""
        key = (parent, token)
        node = self._index.get(key)
        if node is not None:
            return node, False
        node = len(self.tokens)
        self._index[key] = node
        self.tokens.append(token)
        self.parents.append(parent)
        return node, True


def ancestor_matrix(parents) -> np.ndarray:
    """bool[n, n] for a parent array in topological order (``parents[i] < i``, -1 for roots): ``m[i, j]`` is True
    when node ``j`` is node ``i`` or one of its ancestors."""
    n = len(parents)
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        p = parents[i]
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    return mask


def top_of_trie(root: int, node_tokens: np.ndarray, parents: np.ndarray, scores: np.ndarray, budget: int,
                min_score: float, source: str) -> DraftTree:
    """``DraftTree`` of the best ``budget`` nodes (root included) of a kernel trie with non-increasing scores.

    Nodes are ranked by score, ties to the lower index (the parent's index is lower than its children's), so every
    prefix of the ranking is closed under parents. Nodes scoring below ``min_score`` are dropped.
    """
    if len(node_tokens) <= 1 or budget <= 1:
        return DraftTree.root_only(root)
    cand = np.flatnonzero(scores[1:] >= min_score) + 1
    if len(cand) == 0:
        return DraftTree.root_only(root)
    order = cand[np.lexsort((cand, -scores[cand]))][: budget - 1]
    keep = np.concatenate(([0], np.sort(order)))
    return DraftTree.from_arrays(root, node_tokens, parents, scores, source).subset(keep)


def merge_nonempty(root_token: int, trees: list[DraftTree], budget: int, pinned_sources=()) -> DraftTree:
    """Merge the trees that hold guesses (root-only trees carry nothing) and prune to ``budget``, keeping the
    nodes of ``pinned_sources`` on top of it; root-only when none holds guesses."""
    trees = [t for t in trees if len(t) > 1]
    if not trees:
        return DraftTree.root_only(root_token)
    tree = trees[0] if len(trees) == 1 else merge(*trees)
    return tree.prune(budget, pinned=tree.pinned_mask(pinned_sources) if pinned_sources else None)


def merge(*trees: DraftTree) -> DraftTree:
    """Longest-prefix (trie) merge of trees that share a root token.

    A node present in several trees appears once, with the highest score and the union of its sources. Nodes stay in
    topological order: the first tree's nodes first, then each later tree's new nodes in its own order.
    """
    if not trees:
        raise ValueError("merge needs at least one tree")
    root = trees[0].root_token
    names: list[str] = []
    for t in trees:
        if t.root_token != root:
            raise ValueError(f"cannot merge trees with different roots ({root} and {t.root_token})")
        for name in t.source_names:
            if name not in names:
                names.append(name)
    if len(names) > 32:
        raise ValueError("at most 32 distinct sources can be merged")
    trie = Trie(root)
    scores = [1.0]
    masks = [0]
    for t in trees:
        bit_of = [1 << names.index(name) for name in t.source_names]
        local = np.empty(len(t), dtype=np.int64)
        local[0] = 0
        for i in range(1, len(t)):
            bits = 0
            m = int(t.source_mask[i])
            for b, bit in enumerate(bit_of):
                if m >> b & 1:
                    bits |= bit
            node, new = trie.child(int(local[t.parents[i]]), int(t.tokens[i]))
            if new:
                scores.append(float(t.scores[i]))
                masks.append(bits)
            else:
                scores[node] = max(scores[node], float(t.scores[i]))
                masks[node] |= bits
            local[i] = node
    return DraftTree(
        tokens=np.asarray(trie.tokens, dtype=np.int64),
        parents=np.asarray(trie.parents, dtype=np.int32),
        scores=np.asarray(scores, dtype=np.float32),
        source_mask=np.asarray(masks, dtype=np.uint32),
        source_names=tuple(names),
    )
