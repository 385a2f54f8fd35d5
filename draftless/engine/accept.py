"""Acceptance: pure functions of (tree, logits) that decide which draft nodes the target model agrees with.

Greedy: from the root, follow the child whose token is the argmax of the current node's logits; the first argmax
with no matching child is the bonus token. The committed tokens are exactly what one-token greedy decoding gives.

Sampling (sample-and-walk): at the current node draw ``y ~ p(. | prefix)`` with the same warpers plain sampling
uses; if a child carries ``y`` move there and draw again, else emit ``y`` and stop. Each emitted token is a draw
from the target's conditional given everything emitted before it, whatever the tree holds (the tree was fixed
before the draws), so the output has exactly the target distribution. Drafts only decide how many draws one
forward pass serves.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .tree import DraftTree


@dataclass(frozen=True)
class Acceptance:
    """``accepted``: int64[k+1] node indices from the root along the accepted path; ``bonus``: the next token."""

    accepted: np.ndarray
    bonus: int


def _child_index(tree: DraftTree) -> dict[tuple[int, int], int]:
    return {(int(p), int(t)): i for i, (p, t) in enumerate(zip(tree.parents[1:], tree.tokens[1:]), start=1)}


def accept_greedy(tree: DraftTree, logits) -> Acceptance:
    """``logits``: float[n, V] at the tree's nodes, or anything indexable by node that gives float[V] rows (a
    ``processing.TreeScores``, which then scores only the nodes the walk reads)."""
    if isinstance(logits, torch.Tensor):
        targets = logits.argmax(dim=-1).tolist()
        target = targets.__getitem__
    else:
        def target(node: int) -> int:
            return int(logits[node].argmax())
    if len(tree) == 1:
        return Acceptance(np.zeros(1, dtype=np.int64), int(target(0)))
    child = _child_index(tree)
    path = [0]
    node = 0
    while True:
        best = int(target(node))
        nxt = child.get((node, best))
        if nxt is None:
            return Acceptance(np.asarray(path, dtype=np.int64), best)
        path.append(nxt)
        node = nxt


class SamplingWarper:
    """Temperature, then top-k, then top-p: the order and implementations of ``model.generate``'s warpers. The
    engine itself samples from scores processed by the request's own processor list (``SOFTMAX``); this stays
    as the reference the sampling tests compute exact distributions with."""

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
        if not temperature or temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling (got {temperature}); "
                             "use do_sample=False for greedy")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 (got {top_k})")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {top_p})")
        warpers = LogitsProcessorList()
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k is not None and top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=top_p))
        self._warpers = warpers

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """float[..., V] raw logits -> float32 probabilities after warping."""
        scores = logits.float().reshape(-1, logits.shape[-1])
        scores = self._warpers(None, scores)
        return torch.softmax(scores, dim=-1).reshape(logits.shape)


class _Softmax:
    """The "warper" for scores that are already processed (warpers included, as ``model.generate`` builds them):
    ``softmax`` in float32, what ``model.generate`` draws from."""

    @staticmethod
    def probs(scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores.float(), dim=-1)


SOFTMAX = _Softmax()


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token drawn from ``probs`` (float[V], non-negative, not all zero) as ``torch.multinomial(probs, 1)``
    draws it, over the tokens of non-zero probability only. Why: after top-k or top-p a warped distribution keeps
    tens of tokens of a 49k-262k vocabulary, and multinomial's cost follows the vector's length (about 1 ms over
    SmolLM2's 49k here against 0.07 ms over the support), paid once per drawn token. The same distribution; another
    use of the random stream than a draw over the whole vector."""
    support = torch.nonzero(probs).squeeze(1)
    if len(support) == len(probs):
        return int(torch.multinomial(probs, 1, generator=generator))
    return int(support[torch.multinomial(probs[support], 1, generator=generator)])


def accept_sampling(
    tree: DraftTree, logits: torch.Tensor, warper, generator: torch.Generator | None = None
) -> Acceptance:
    """Sample-and-walk (see module docstring). ``logits``: float[n, V] (or a ``processing.TreeScores``);
    ``warper``: a ``SamplingWarper`` on raw logits, or ``SOFTMAX`` on scores the request's processors already
    warped."""
    child = _child_index(tree) if len(tree) > 1 else {}
    path = [0]
    node = 0
    while True:
        probs = warper.probs(logits[node])
        y = draw(probs, generator)
        nxt = child.get((node, y))
        if nxt is None:
            return Acceptance(np.asarray(path, dtype=np.int64), y)
        path.append(nxt)
        node = nxt
