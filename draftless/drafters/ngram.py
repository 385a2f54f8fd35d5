"""``ngram``: multi-candidate prompt lookup over the prompt and the generated text.

An incremental index maps every n-gram of the context (orders ``min_order..max_order``) to the positions right after
its occurrences; each step indexes only the tokens committed since the last step. Drafting looks up the longest
suffix of the context that occurred before, takes the continuations of its most recent occurrences, and merges them
into a trie: distinct continuations become branches, and a node's score is the fraction of occurrences whose
continuation passes through it, discounted by how short the match was. Compared with HF prompt lookup (one chain
from the leftmost match of a 1-2-gram) this prefers recent, longer matches, backs off to shorter orders to
fill its candidates (ANPD-style multi-level lookup), and hedges between continuations.
"""
from __future__ import annotations

import numpy as np

from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree, Trie


class NGramDrafter(BaseDrafter):
    """``max_order``/``min_order``: longest and shortest suffix lengths looked up; ``max_occurrences``: how many
    recent occurrences of the match contribute continuations; ``depth``: continuation length read per occurrence."""

    name = "ngram"

    def __init__(self, max_order: int = 6, min_order: int = 1, max_occurrences: int = 8, depth: int = 24):
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
        # Longest order first; lower orders back off to fill up to max_occurrences (ANPD-style multi-level), each
        # occurrence remembering the order it matched at, which sets its reliability.
        seen: set[int] = set()
        occurrences: list[tuple[int, int]] = []  # (continuation start, matched order)
        for n in range(min(self.max_order, end - 1), self.min_order - 1, -1):
            positions = self._index[n].get(tuple(tokens[end - n : end]))
            if not positions or len(positions) < 2:  # the suffix itself is always the last occurrence
                continue
            for p in reversed(positions[-1 - self.max_occurrences : -1]):  # most recent first, suffix excluded
                if p not in seen:
                    seen.add(p)
                    occurrences.append((p, n))
            if len(occurrences) >= self.max_occurrences:
                break
        if not occurrences:
            return DraftTree.root_only(root)
        return self._tree(root, occurrences[: self.max_occurrences], budget)

    @staticmethod
    def reliability(order: np.ndarray) -> np.ndarray:
        """Prior probability that a continuation read after an ``order``-token match is right, per token.

        Short matches are weak evidence (a 1-token match is right perhaps one time in six); each further matched
        token, including drafted tokens once the target agrees with them, makes the next one likelier. The
        engine's calibrator corrects this prior with observed acceptance.
        """
        return 1.0 - 0.85 * 0.72 ** (np.asarray(order, dtype=np.float64) - 1.0)

    def _tree(self, root: int, occurrences: list[tuple[int, int]], budget: int) -> DraftTree:
        """Trie of continuations. A node's score is the weighted share of occurrences through it times the
        reliability of each step on its path, where depth d after an order-n match counts as an (n + d - 1)-match;
        the longest matches dominate the weights."""
        tokens_list = self._tokens
        end = len(tokens_list)
        best_order = max(n for _, n in occurrences)
        trie = Trie(root)
        weight = [0.0]
        order_of = [float(best_order)]
        depth_of = [0]
        total = 0.0
        for p, n in occurrences:
            w = 2.0 ** (n - best_order)  # a shorter backoff match counts half per missing token
            total += w
            node = 0
            for tok in tokens_list[p : min(p + self.depth, end)]:
                nxt, new = trie.child(node, tok)
                if new:
                    weight.append(0.0)
                    order_of.append(float(n))
                    depth_of.append(depth_of[node] + 1)
                weight[nxt] += w
                order_of[nxt] = max(order_of[nxt], float(n))
                node = nxt
        depth = np.asarray(depth_of, dtype=np.float64)
        step_reliability = self.reliability(np.asarray(order_of) + depth - 1.0)
        parents_arr = np.asarray(trie.parents, dtype=np.int32)
        scores = np.ones(len(trie), dtype=np.float64)
        share = np.asarray(weight) / total
        for i in range(1, len(trie)):  # parents precede children
            par = parents_arr[i]
            parent_share = share[par] if par > 0 else 1.0
            scores[i] = scores[par] * (share[i] / parent_share) * step_reliability[i]
        return DraftTree.from_arrays(root, trie.tokens, parents_arr, scores, self.name, depths=depth_of).prune(budget)
