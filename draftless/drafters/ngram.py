"""``ngram``: multi-candidate prompt lookup over the prompt and the generated text.

An incremental index maps every n-gram of the context (orders ``min_order..max_order``) to the positions right after
its occurrences; each step indexes only the tokens committed since the last step. Drafting looks up the longest
suffix of the context that occurred before, takes the continuations of its most recent occurrences, and merges them
into a trie: distinct continuations become branches, and a node's score is the fraction of occurrences whose
continuation passes through it, discounted by how short the match was. Compared with HF prompt lookup (one chain
from the leftmost match of a 1-2-gram) this prefers recent, longer matches and hedges between continuations.
"""
from __future__ import annotations

import numpy as np

from ..drafter import BaseDrafter, StepFeedback
from ..tree import DraftTree


class NGramDrafter(BaseDrafter):
    """``max_order``/``min_order``: longest and shortest suffix lengths looked up; ``max_occurrences``: how many
    recent occurrences of the match contribute continuations; ``depth``: continuation length read per occurrence."""

    name = "ngram"

    def __init__(self, max_order: int = 6, min_order: int = 1, max_occurrences: int = 8, depth: int = 12):
        if not 1 <= min_order <= max_order:
            raise ValueError("need 1 <= min_order <= max_order")
        self.max_order = max_order
        self.min_order = min_order
        self.max_occurrences = max_occurrences
        self.depth = depth
        self._reset()

    def _reset(self) -> None:
        self._tokens: list[int] = []
        # _index[n][ngram] = positions p (ascending) with tokens[p-n:p] == ngram, i.e. where its continuation starts.
        self._index: list[dict[tuple, list[int]]] = [dict() for _ in range(self.max_order + 1)]

    def begin(self, prompt_ids: np.ndarray) -> None:
        self._reset()
        self._extend(prompt_ids)

    def _extend(self, new_tokens) -> None:
        tokens = self._tokens
        for tok in (int(t) for t in new_tokens):
            tokens.append(tok)
            end = len(tokens)
            for n in range(self.min_order, min(self.max_order, end) + 1):
                self._index[n].setdefault(tuple(tokens[end - n : end]), []).append(end)

    def _sync(self, context: np.ndarray) -> None:
        """Index the tokens of ``context`` not seen yet (a new or rewritten context is indexed from scratch)."""
        have = len(self._tokens)
        if have > len(context) or (have and int(context[have - 1]) != self._tokens[-1]):
            self._reset()
            have = 0
        if have < len(context):
            self._extend(context[have:].tolist())

    def feedback(self, step: StepFeedback) -> None:
        self._sync(step.context)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        self._sync(context)
        tokens = self._tokens
        end = len(tokens)
        root = tokens[-1]
        for n in range(min(self.max_order, end - 1), self.min_order - 1, -1):
            positions = self._index[n].get(tuple(tokens[end - n : end]))
            if not positions or len(positions) < 2:  # the suffix itself is always the last occurrence
                continue
            starts = positions[-1 - self.max_occurrences : -1][::-1]  # most recent first, the suffix excluded
            continuations = [tokens[p : min(p + self.depth, end)] for p in starts]
            continuations = [c for c in continuations if c]
            if continuations:
                return self._tree(root, continuations, n, budget)
        return DraftTree.root_only(root)

    def _tree(self, root: int, continuations: list[list[int]], order: int, budget: int) -> DraftTree:
        """Trie of continuations; score = share of occurrences through the node x match reliability^depth."""
        reliability = order / (order + 1.0)
        total = float(len(continuations))
        tokens = [root]
        parents = [-1]
        counts = [total]
        depth_of = [0]
        child: dict[tuple[int, int], int] = {}
        for cont in continuations:
            node = 0
            for tok in cont:
                key = (node, tok)
                nxt = child.get(key)
                if nxt is None:
                    nxt = len(tokens)
                    child[key] = nxt
                    tokens.append(tok)
                    parents.append(node)
                    counts.append(0.0)
                    depth_of.append(depth_of[node] + 1)
                counts[nxt] += 1.0
                node = nxt
        counts_arr = np.asarray(counts)
        scores = counts_arr / total * reliability ** np.asarray(depth_of, dtype=np.float64)
        scores[0] = 1.0
        mask = np.ones(len(tokens), dtype=np.uint32)
        mask[0] = 0
        tree = DraftTree(
            tokens=np.asarray(tokens, dtype=np.int64),
            parents=np.asarray(parents, dtype=np.int32),
            scores=scores.astype(np.float32),
            source_mask=mask,
            source_names=(self.name,),
        )
        return tree.prune(budget)
