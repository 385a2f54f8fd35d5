"""``lookahead``: guesses the target makes for itself (lookahead decoding, Jacobi iteration), no corpus, no model.

Each pass verifies, next to the other drafts, a *Jacobi window*: a chain of ``window`` guessed tokens hanging from
the root. The target's logits at the window's nodes are one Jacobi iteration: the argmax at window node j is a
better guess for position j + 1 than the one verified, conditioned on a guessed prefix. Next pass verifies the
updated window, shifted by the tokens just committed, so guesses converge towards what the target would write.

Every iteration leaves n-grams along its *diagonal*: the token at position p from the latest iteration, the token
at p - 1 from the iteration before, ... ``ngram`` tokens in all, each conditioned on its predecessor. They go into
an ``NGramPool`` keyed by their first token, and each step drafts the pool's n-grams that start with the root,
merged by prefix into one tree. Both parts are checked by the target like any draft, so output never changes.

How this differs from the reference method (Fu et al., 2024), on purpose:

- the window is one chain, not a 2-D block of ``window x (ngram - 1)`` tokens: earlier levels are the windows of
  earlier passes, kept by the drafter, so a pass pays ``window`` extra tokens instead of ``window * (ngram - 1)``;
- the window is part of the tree (its nodes share the root's path, and are committed when the target agrees: plain
  Jacobi decoding's acceptance), so the window and the drafts need no second mask layout;
- pool n-grams sharing a prefix share nodes (one trie) instead of being verified as independent chains.

The window's nodes are *pinned* (``pinned_sources``): the engine verifies them whatever their scores, since their
value is the iteration they feed, not the chance they are accepted now. Their cost is chosen up front from the
measured cost curve (``window_for_curve``): where an extra token costs little (GPUs), a wide window; where it is
expensive (this kind of CPU), a narrow one.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree, merge
from ..index.ngram_pool import NGramPool

WINDOW_SOURCE = "lookahead-window"
# Marginal cost of one more window token, as a fraction of a one-token pass, that a window token is worth: the
# window feeds the pool and is sometimes accepted outright. Measured curves: a GPU pass of 16 tokens costs about one
# of 1 (marginal ~0); this CPU's fast path adds ~5% a token up to 8 (t(8)/t(1) ~1.4).
MAX_MARGINAL_COST = 0.04
MIN_WINDOW, MAX_WINDOW = 2, 12


def window_for_curve(curve, base_nodes: int = 4) -> int:
    """The widest window (``MIN_WINDOW``..``MAX_WINDOW``) whose tokens each cost at most ``MAX_MARGINAL_COST`` of
    a one-token pass, added on top of a ``base_nodes``-node tree (a typical draft); ``MIN_WINDOW`` when even that
    is too expensive, so an explicitly chosen ``lookahead`` still iterates."""
    t1 = float(curve.cost(1))
    base = float(curve.cost(base_nodes))
    best = MIN_WINDOW
    for w in range(MIN_WINDOW, MAX_WINDOW + 1):
        if (float(curve.cost(base_nodes + w)) - base) / (w * t1) <= MAX_MARGINAL_COST:
            best = w
    return best


class LookaheadDrafter(BaseDrafter):
    """Jacobi window plus n-gram pool (see the module docstring).

    - ``window``: guessed tokens verified each pass (the Jacobi window, pinned);
    - ``ngram``: length of the n-grams the pool collects (first token + ``ngram - 1`` drafted tokens), >= 2;
    - ``pool_size``: continuations kept per first token (``NGramPool.per_key``); ``max_keys``: first tokens kept;
    - ``candidates``: pool n-grams drafted per step (most recent first);
    - ``seed``: the window's first guesses are tokens drawn from the prompt with this seed (reproducible runs).

    Counters for benchmarks (``report()``): pool lookups and hits, window nodes verified, window tokens accepted.
    """

    name = "lookahead"
    pinned_sources = (WINDOW_SOURCE,)

    def __init__(self, window: int = 4, ngram: int = 4, pool_size: int = 8, max_keys: int = 4096,
                 candidates: int = 6, seed: int = 0):
        if window < 1:
            raise ValueError("window must be at least 1")
        if ngram < 2:
            raise ValueError("ngram must be at least 2 (a first token and one continuation)")
        self.window = int(window)
        self.ngram = int(ngram)
        self.candidates = int(candidates)
        self.pool = NGramPool(per_key=pool_size, max_keys=max_keys)
        self.seed = int(seed)
        self.pool_lookups = self.pool_hits = self.window_verified = self.window_accepted = 0
        self._reset(np.zeros(1, dtype=np.int64))

    # ------------------------------------------------------------------ request state
    def _reset(self, prompt_ids: np.ndarray) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._fill_from = np.asarray(prompt_ids, dtype=np.int64).copy()
        self._root_pos = -1  # absolute position of the root the window hangs from (-1: not yet placed)
        self._guesses = np.zeros(0, dtype=np.int64)  # int64[window]: guesses for root_pos + 1 ...
        # earlier windows, as {absolute position: token verified there}, newest last: the diagonal's earlier levels
        self._levels: deque[dict[int, int]] = deque(maxlen=self.ngram - 1)

    def begin(self, prompt_ids: np.ndarray) -> None:
        """A new request: fresh window and levels; the pool starts empty (it is per request)."""
        self.pool.clear()
        self._reset(prompt_ids if len(prompt_ids) else np.zeros(1, dtype=np.int64))

    def _fill(self, count: int) -> np.ndarray:
        """``count`` first guesses: tokens drawn from the prompt (cheap, and in the request's vocabulary)."""
        return self._fill_from[self._rng.integers(0, len(self._fill_from), size=count)]

    def _place(self, root_pos: int) -> None:
        """Make the window hang from ``root_pos``: kept when already there, else started afresh (a context the
        drafter did not follow step by step, e.g. the first step)."""
        if root_pos != self._root_pos or len(self._guesses) != self.window:
            self._guesses = self._fill(self.window)
            self._levels.clear()
            self._root_pos = root_pos

    # ------------------------------------------------------------------ draft
    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        root = int(context[-1])
        self._place(len(context) - 1)
        window = DraftTree.from_chain(root, self._guesses.tolist(), np.full(self.window, 1e-3), WINDOW_SOURCE)
        self.pool_lookups += 1
        found = self.pool.continuations(root)[: self.candidates]
        if not found:
            return window
        self.pool_hits += 1
        # most recent first; a node shared by several n-grams keeps its best score (from_paths)
        scores = [[0.5 * 0.85 ** rank * 0.7 ** j for j in range(len(c))] for rank, c in enumerate(found)]
        return merge(window, DraftTree.from_paths(root, found, scores, self.name))

    # ------------------------------------------------------------------ learn
    def _window_nodes(self, tree: DraftTree) -> list[int]:
        """Indices of the verified window nodes, root first: the path from the root along the guesses."""
        kids = tree.children()
        path = [0]
        for token in self._guesses.tolist():
            nxt = next((c for c in kids[path[-1]] if int(tree.tokens[c]) == token), None)
            if nxt is None:
                break
            path.append(nxt)
        return path

    def feedback(self, step: StepFeedback) -> None:
        root_pos = len(step.context) - len(step.new_tokens) - 1
        if root_pos != self._root_pos or len(self._guesses) != self.window:
            return  # the engine did not verify the window this drafter last drafted
        path = self._window_nodes(step.tree)
        verified = len(path) - 1
        self.window_verified += verified
        # The Jacobi iteration: the target's argmax at window node j guesses position root_pos + j + 1.
        predicted = torch.argmax(step.logits[path].float(), dim=-1).cpu().numpy()
        this_level = {root_pos: int(step.tree.tokens[0])}
        this_level.update({root_pos + j: int(t) for j, t in enumerate(self._guesses[:verified].tolist(), 1)})
        accepted = 0
        for j in range(verified):
            if len(step.accepted) > j + 1 and int(step.accepted[j + 1]) == path[j + 1]:
                accepted += 1
            else:
                break
        self.window_accepted += accepted
        self._collect(this_level, predicted, root_pos)
        self._levels.append(this_level)

        # shift the window to the new root, keeping the freshest guess for each position
        new_root = root_pos + len(step.new_tokens)
        guesses = self._fill(self.window)
        for j in range(self.window):
            pos = new_root + 1 + j
            offset = pos - root_pos - 1  # index into the old window / predictions
            if offset < len(predicted):
                guesses[j] = predicted[offset]
            elif offset < self.window:
                guesses[j] = self._guesses[offset]
        self._guesses = guesses
        self._root_pos = new_root

    def _collect(self, this_level: dict[int, int], predicted: np.ndarray, root_pos: int) -> None:
        """Add the diagonal n-grams ending at each predicted position: the prediction at p, this pass's token at
        p - 1, the previous pass's at p - 2, ... (levels newest first)."""
        levels = [this_level] + list(reversed(self._levels))
        need = self.ngram - 1
        if len(levels) < need:
            return
        for j, token in enumerate(predicted.tolist()):
            pos = root_pos + 1 + j
            gram = [int(token)]
            for back in range(need):
                prev = levels[back].get(pos - 1 - back)
                if prev is None:
                    break
                gram.append(prev)
            if len(gram) == self.ngram:
                self.pool.add(gram[::-1])

    def report(self) -> dict:
        """Counters since the drafter was built: pool hit rate, window nodes verified and accepted."""
        return {
            "window": self.window,
            "ngram": self.ngram,
            "pool_lookups": self.pool_lookups,
            "pool_hits": self.pool_hits,
            "pool_hit_rate": self.pool_hits / self.pool_lookups if self.pool_lookups else 0.0,
            "window_nodes_verified": self.window_verified,
            "window_tokens_accepted": self.window_accepted,
            "pool_ngrams": len(self.pool),
        }
