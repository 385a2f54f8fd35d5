"""Logits processors and stopping criteria on draft trees, exactly as one-token decoding applies them.

One-token decoding calls ``processors(input_ids, logits)`` with ``input_ids`` = everything committed so far, then
appends the chosen token and asks the stopping criteria. On a tree, node i at depth d predicts the token after the
prefix plus node i's own root-to-node path, so its processors must see exactly ``history + path(i)``: a
repetition penalty, a no-repeat n-gram ban, a min-new-tokens EOS ban or a user processor then scores node i as
plain decoding would have scored that same position. Nodes at one depth have inputs of one length, so the
processors run once per depth on a batch of that depth's nodes (processors are batch-aware).

Processors are treated as functions of ``(input_ids, scores)``; one that keeps state between calls (counts its
calls, caches the last batch) sees more calls than under plain decoding and is not covered by the guarantee.
"""
from __future__ import annotations

import numpy as np
import torch

from .tree import DraftTree


def path_tokens(tree: DraftTree) -> np.ndarray:
    """int64[n, max_depth]: row i holds node i's root-to-node tokens (root excluded) in its first depth(i) cells."""
    depths = tree.depths
    out = np.zeros((len(tree), max(1, tree.max_depth)), dtype=np.int64)
    for i in range(1, len(tree)):
        d = depths[i]
        out[i, : d - 1] = out[tree.parents[i], : d - 1]
        out[i, d - 1] = tree.tokens[i]
    return out


def tree_scores(processors, history: np.ndarray, tree: DraftTree, logits: torch.Tensor) -> torch.Tensor:
    """Processed scores float32[n, V] at every node of ``tree``.

    ``history``: int64[L], every committed token including the root (for a left-padded batch row: its padding
    too, as ``model.generate``'s processors see it); ``logits``: float[n, V] raw logits of the tree pass. Like
    ``model.generate`` the logits are cast to float32 first. Without processors the cast logits are returned."""
    logits = logits.float()
    if not processors:
        return logits
    device = logits.device
    depths = tree.depths
    paths = path_tokens(tree)
    base = torch.from_numpy(np.ascontiguousarray(history, dtype=np.int64)).to(device)
    out = torch.empty_like(logits)
    for d in range(int(depths.max()) + 1):
        nodes = np.flatnonzero(depths == d)
        idx = torch.from_numpy(nodes).to(device)
        ids = base.expand(len(nodes), -1)
        if d:
            ids = torch.cat([ids, torch.from_numpy(paths[nodes, :d]).to(device)], dim=1)
        out[idx] = processors(ids, logits[idx])  # logits[idx] is a copy: in-place processors touch nothing else
    return out


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
