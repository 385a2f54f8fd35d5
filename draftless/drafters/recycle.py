"""Token Recycling: reuse the target model's own top-k guesses as a drafting table.

Every verification step computes the target's next-token distribution at *every* tree node, accepted or not. Plain
decoding throws the rejected ones away; token recycling keeps them. For each verified node carrying token ``t`` we
record the model's top-k next tokens after it::

    next_tokens[t] := topk(logits[i]).indices          int32[V, k]   (-1 = never seen)
    next_probs[t]  := softmax(logits[i])[next_tokens[t]]   float[V, k]  (sorted, descending)

The table is a first-order (bigram-like) approximation of the model, learned for free. To draft, grow a tree from
the last committed token best-first by cumulative probability: a node's children are its token's row, and a node's
score is the product of the recorded probabilities along its path (root = 1). Since every factor is <= 1, scores
never increase along a path, so "the best ``budget`` nodes" is automatically a connected tree.

The table belongs to the model, not to a request: with ``persist=True`` (the default) it survives ``begin`` and can be
saved to / loaded from an ``.npz`` file.
"""
from __future__ import annotations

import heapq
import os

import numpy as np
import torch

from ..atomic import atomic_file
from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree
from ..index.top_k import top_k_with_probs

_FORMAT_VERSION = 1


class RecycleDrafter(BaseDrafter):
    """Drafts from a ``[vocab_size, k]`` table of the target's own recent top-k next tokens.

    Parameters
    ----------
    vocab_size: width of the target's logits (``lm_head`` rows, which may exceed the tokenizer's length).
    k: children recorded per token (the tree's maximum branching factor).
    persist: keep the table across requests (``begin`` resets it only when False).
    max_depth: deepest draft node, in edges from the root.
    min_score: nodes whose cumulative score falls below this are not drafted (0 keeps every node the budget allows).
    prefer_accepted: when a token occurs at several verified nodes of one step, the row written last wins; with True
        the accepted nodes are written after the rejected ones, so the model's view along the committed path (the
        context the next draft starts from) wins over a view from a rejected branch. With False, plain node order.
    prob_dtype: storage type of the probabilities (``np.float16`` halves the memory).
    """

    name = "recycle"

    def __init__(
        self,
        vocab_size: int,
        k: int = 8,
        persist: bool = True,
        max_depth: int = 16,
        min_score: float = 0.0,
        prefer_accepted: bool = True,
        prob_dtype: type = np.float32,
    ) -> None:
        if vocab_size <= 0 or k <= 0:
            raise ValueError(f"vocab_size and k must be positive, got vocab_size={vocab_size}, k={k}")
        self.vocab_size = int(vocab_size)
        self.k = int(k)
        self.persist = bool(persist)
        self.max_depth = int(max_depth)
        self.min_score = float(min_score)
        self.prefer_accepted = bool(prefer_accepted)
        self.next_tokens = np.full((self.vocab_size, self.k), -1, dtype=np.int32)
        self.next_probs = np.zeros((self.vocab_size, self.k), dtype=prob_dtype)

    @classmethod
    def for_model(cls, model, **kwargs) -> RecycleDrafter:
        """A drafter sized to ``model``'s logits (its output embedding rows)."""
        head = model.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
        return cls(int(vocab), **kwargs)

    # ------------------------------------------------------------------ protocol
    def begin(self, prompt_ids: np.ndarray) -> None:
        if not self.persist:
            self.reset()

    def reset(self) -> None:
        """Forget everything: every row becomes unknown."""
        self.next_tokens.fill(-1)
        self.next_probs.fill(0)

    @property
    def known_rows(self) -> int:
        """How many tokens have a recorded row."""
        return int((self.next_tokens[:, 0] >= 0).sum())

    def feedback(self, step: StepFeedback) -> None:
        """Recycle the logits of every verified node, accepted or not."""
        if step.logits is None:
            return
        tokens = np.asarray(step.tree.tokens, dtype=np.int64)
        if step.logits.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"recycle needs logits for every verified node: tree has {tokens.shape[0]} nodes, "
                f"logits have {step.logits.shape[0]} rows"
            )
        order = np.arange(tokens.shape[0])
        if self.prefer_accepted and len(step.accepted):
            accepted = np.asarray(step.accepted, dtype=np.int64)
            is_accepted = np.zeros(tokens.shape[0], dtype=bool)
            is_accepted[accepted] = True
            order = np.concatenate([order[~is_accepted], accepted])
        self._update(tokens, step.logits, order)

    def seed(self, token_ids: np.ndarray, logits: torch.Tensor, chunk: int = 64) -> None:
        """Learn from prefill: ``logits[i]`` predicts the token after ``token_ids[i]`` (same update as feedback)."""
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if logits.dim() == 3:  # [1, L, V] straight from a model's output
            logits = logits.reshape(-1, logits.shape[-1])
        if logits.shape[0] != tokens.shape[0]:
            raise ValueError(f"seed got {tokens.shape[0]} tokens but {logits.shape[0]} logit rows")
        self._update(tokens, logits, np.arange(tokens.shape[0]), chunk=chunk)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        root = int(context[-1])
        budget = int(budget)
        next_tokens, next_probs = self.next_tokens, self.next_probs
        if budget <= 1 or self.max_depth <= 0 or not 0 <= root < self.vocab_size or next_tokens[root, 0] < 0:
            return DraftTree.root_only(root)

        # Lazy best-first search. A row is sorted by probability, so a node's best unexpanded child is always the
        # next one in its row: the heap holds, per expanded node, only the best child not yet taken
        # (score, tie, parent node, rank in the parent's row). Each pop adds one node and pushes at most two
        # candidates (its next sibling and its own first child), so a draft costs O(budget log budget).
        rows: dict[int, tuple[list[int], list[float]]] = {}

        def row(token: int):
            r = rows.get(token)
            if r is None:
                toks = next_tokens[token].tolist()
                probs = next_probs[token].tolist()
                n = len(toks)
                while n and toks[n - 1] < 0:  # a row is written whole, but be safe with a short top-k
                    n -= 1
                r = rows[token] = (toks[:n], probs[:n])
            return r

        tokens = [root]
        parents = [-1]
        scores = [1.0]
        depths = [0]
        min_score = self.min_score
        max_depth = self.max_depth
        tie = 0
        root_toks, root_probs = row(root)
        heap = [(-root_probs[0], tie, 0, 0)]
        while heap and len(tokens) < budget:
            neg_score, _, parent, rank = heapq.heappop(heap)
            score = -neg_score
            if score < min_score:
                break  # best-first: everything left scores lower still
            siblings_toks, siblings_probs = row(tokens[parent])
            node = len(tokens)
            token = siblings_toks[rank]
            tokens.append(token)
            parents.append(parent)
            scores.append(score)
            depth = depths[parent] + 1
            depths.append(depth)
            if rank + 1 < len(siblings_toks):
                tie += 1
                heapq.heappush(heap, (-scores[parent] * siblings_probs[rank + 1], tie, parent, rank + 1))
            if depth < max_depth:
                child_toks, child_probs = row(token)
                if child_toks:
                    tie += 1
                    heapq.heappush(heap, (-score * child_probs[0], tie, node, 0))

        return DraftTree.from_arrays(root, tokens, parents, scores, self.name, depths=depths)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the table to ``path`` (an ``.npz`` file, written atomically; the name is used as given)."""
        with atomic_file(path, "wb") as f:
            np.savez(
                f,
                format_version=np.int64(_FORMAT_VERSION),
                vocab_size=np.int64(self.vocab_size),
                k=np.int64(self.k),
                next_tokens=self.next_tokens,
                next_probs=self.next_probs,
            )

    def load(self, path: str | os.PathLike) -> None:
        """Replace the table with one saved by ``save``; its vocab size and k must match this drafter's."""
        path = os.fspath(path)
        with np.load(path, allow_pickle=False) as data:
            missing = {"format_version", "vocab_size", "k", "next_tokens", "next_probs"} - set(data.files)
            if missing:
                raise ValueError(f"{path} is not a recycle table (missing {sorted(missing)})")
            version = int(data["format_version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path} has recycle table format {version}, this version reads {_FORMAT_VERSION}")
            vocab_size, k = int(data["vocab_size"]), int(data["k"])
            if (vocab_size, k) != (self.vocab_size, self.k):
                raise ValueError(
                    f"{path} holds a recycle table for vocab_size={vocab_size}, k={k}; this drafter has "
                    f"vocab_size={self.vocab_size}, k={self.k} (a table from another model or setting)"
                )
            next_tokens = data["next_tokens"]
            next_probs = data["next_probs"]
        if next_tokens.shape != (vocab_size, k) or next_probs.shape != (vocab_size, k):
            raise ValueError(f"{path} is corrupt: arrays of shape {next_tokens.shape} and {next_probs.shape}")
        self.next_tokens = np.ascontiguousarray(next_tokens, dtype=np.int32)
        self.next_probs = np.ascontiguousarray(next_probs, dtype=self.next_probs.dtype)

    # ------------------------------------------------------------------ the update
    def _update(self, tokens: np.ndarray, logits: torch.Tensor, order: np.ndarray, chunk: int = 64) -> None:
        """Write ``row tokens[i] := topk(logits[i])`` for ``i`` in ``order``; a later write to a token wins."""
        width = logits.shape[-1]
        if width > self.vocab_size:
            raise ValueError(
                f"logits have {width} columns but the recycle table has vocab_size={self.vocab_size}; "
                f"build RecycleDrafter(vocab_size={width}) (or RecycleDrafter.for_model(model))"
            )
        order = order[(tokens[order] >= 0) & (tokens[order] < self.vocab_size)]
        if order.size == 0:
            return
        # Keep only the last write to each token: no top-k wasted on rows that are overwritten anyway, and numpy's
        # fancy assignment never sees duplicate indices (whose winner it does not promise).
        seq = tokens[order]
        _, first_from_end = np.unique(seq[::-1], return_index=True)
        order = order[np.sort(order.size - 1 - first_from_end)]
        rows = tokens[order]
        k = min(self.k, width)
        with torch.no_grad():
            if logits.shape[0] <= chunk:
                # one step's tree: top-k over all n rows at once, then pick the surviving rows in numpy
                ids, probs = top_k_with_probs(logits, k)
                self._write(rows, ids[order], probs[order], k)
                return
            for start in range(0, order.size, chunk):  # a long prefill: bound the temporary float copies
                sel = order[start:start + chunk]
                ids, probs = top_k_with_probs(logits.index_select(0, torch.from_numpy(sel).to(logits.device)), k)
                self._write(rows[start:start + chunk], ids, probs, k)

    def _write(self, rows: np.ndarray, ids: np.ndarray, probs: np.ndarray, k: int) -> None:
        self.next_tokens[rows, :k] = ids
        self.next_probs[rows, :k] = probs
        if k < self.k:
            self.next_tokens[rows, k:] = -1
            self.next_probs[rows, k:] = 0
