"""Logits processors and stopping criteria on draft trees, exactly as one-token decoding applies them.

One-token decoding calls ``processors(input_ids, logits)`` with ``input_ids`` = everything committed so far, then
appends the chosen token and asks the stopping criteria. On a tree, node i at depth d predicts the token after the
prefix plus node i's own root-to-node path, so its processors must see exactly ``history + path(i)``: a
repetition penalty, a no-repeat n-gram ban, a min-new-tokens EOS ban or a user processor then scores node i as
plain decoding would have scored that same position.

Scores are computed lazily, node by node, as acceptance walks the tree (``TreeScores``): greedy and
sample-and-walk only ever read the nodes on the path they take (the accepted nodes and the one that yields the
bonus token), so the processors run on k + 1 rows a step instead of on every node. (Scoring every node up front
would take one batched call per depth, since nodes at one depth have inputs of one length; the walk reads fewer
rows than that in every case, and processors such as the n-gram ban cost per row.)

A consequence: processors are called once per committed token, on one row, in the order plain decoding calls
them, plus at most the rest of the accepted path when a stopping criterion cuts a step short. The guarantee is for
processors that are functions of ``(input_ids, scores)``, as transformers' own are; one that keeps state between
calls (counts them) may see those few extra calls.
"""
from __future__ import annotations

import numpy as np
import torch

from .tree import DraftTree


class TreeScores:
    """Processed scores of a tree's nodes, computed on first access: ``scores[i]`` is float32[V], what
    ``processors(history + path(i), logits[i])`` gives (cast to float32 first, as ``model.generate`` casts).

    ``history``: int64[L], every committed token including the root (for a left-padded batch row: its padding
    too, as ``model.generate``'s processors see it); ``logits``: float[n, V], the tree pass's raw logits."""

    def __init__(self, processors, history: np.ndarray, tree: DraftTree, logits: torch.Tensor):
        self.processors = processors
        self.history = history
        self.tree = tree
        self.logits = logits
        self._rows: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.tree)

    def __getitem__(self, node: int) -> torch.Tensor:
        node = int(node)
        row = self._rows.get(node)
        if row is None:
            row = self.logits[node].float()[None]
            if self.processors:
                path = self.tree.tokens[self.tree.path_to(node)[1:]]
                ids = np.concatenate([self.history, path]).astype(np.int64, copy=False)
                # .clone(): a processor that edits scores in place must not reach the pass's logits
                row = self.processors(torch.from_numpy(ids).to(self.logits.device)[None], row.clone())
            row = row[0]
            self._rows[node] = row
        return row

    def rows(self, nodes) -> torch.Tensor:
        """float32[k, V]: the scores of ``nodes`` (indices), stacked."""
        return torch.stack([self[i] for i in nodes])


class StopRule:
    """Where committed tokens end: the stopping criteria checked one committed token at a time.

    ``max_length`` (full length, prompt and padding included) and ``eos`` ids are checked as plain values; ``others``
    (a ``StoppingCriteriaList``: max time, stop strings, user criteria) are called on ``input_ids`` int64[1, L] after
    each token, as ``model.generate`` calls them (with ``scores=None``, what it passes unless ``output_scores``).
    """

    def __init__(self, max_length: int | None, eos: set[int], others, device: torch.device):
        self.max_length = max_length
        self.eos = eos
        self.others = others
        self.device = device

    def cut(self, full: np.ndarray, start: int, tokens: list[int]) -> tuple[int, bool]:
        """``full[:start]`` is the history before ``tokens``, which are already written at ``full[start:]``.
        Returns ``(k, stop)``: keep ``tokens[:k]``; ``stop`` when generation ends after them."""
        for i, tok in enumerate(tokens):
            length = start + i + 1
            if tok in self.eos or (self.max_length is not None and length >= self.max_length):
                return i + 1, True
            if self.others:
                ids = torch.from_numpy(full[:length]).to(self.device)[None]
                if bool(self.others(ids, None).any()):
                    return i + 1, True
        return len(tokens), False
