"""How a suffix-automaton match becomes a draft: the one policy ``sam`` (``sam.py``, over the request and a corpus)
and ``history`` (``history.py``, over earlier requests) both draft by.

A match of ``length`` tokens (the longest suffix of the context that occurs in an automaton) drafts a best-first
tree over the automaton's transitions (``SuffixAutomaton.draft_tree``): the continuations that followed the match,
scored from how often they did, at most ``top_k`` per node, none below ``min_score``, to a depth that grows with the
match (``depth``). A match shorter than ``min_match`` drafts nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..index.suffix_automaton import SuffixAutomaton


@dataclass(frozen=True)
class SuffixDraftPolicy:
    """- ``min_match``: shortest match (tokens) that drafts anything;
    - depth limit ``clip(depth_per_match * match_length, min_depth, max_depth)``: longer matches earn longer drafts;
    - ``top_k``: continuations considered per node; ``smoothing``: prior pseudo-count (scaled by 2/match length)
      against over-trusting few occurrences; ``min_score``: nodes below this estimated acceptance are not drafted.
    """

    min_match: int = 2
    min_depth: int = 4
    max_depth: int = 24
    depth_per_match: float = 2.0
    top_k: int = 3
    smoothing: float = 1.0
    min_score: float = 0.02

    def __post_init__(self):
        for name, kind in (("min_depth", int), ("max_depth", int), ("depth_per_match", float), ("top_k", int),
                           ("smoothing", float), ("min_score", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "min_match", max(1, int(self.min_match)))

    def depth(self, match_len: int) -> int:
        """The depth limit of a draft from a match of ``match_len`` tokens."""
        return int(min(self.max_depth, max(self.min_depth, round(self.depth_per_match * match_len))))

    def draft(self, sam: SuffixAutomaton, state: int, length: int, budget: int, skip_token: int = -1):
        """``sam.draft_tree`` from the match ``(state, length)`` under this policy: ``(tokens, parents, scores)``
        with the root's token left as -1."""
        return sam.draft_tree(state, length, budget, self.depth(length), self.top_k, self.smoothing, self.min_score,
                              skip_token)

    def draft_backing_off(self, sam: SuffixAutomaton, state: int, length: int, budget: int, skip_token: int = -1,
                          min_match: int | None = None):
        """``sam.draft_tree_backing_off`` under this policy: the first of the match and its shorter suffixes (down
        to ``min_match``, default the policy's) whose continuation is not only ``skip_token``; None when none is."""
        return sam.draft_tree_backing_off(state, length, self.min_match if min_match is None else int(min_match),
                                          budget, self.depth, self.top_k, self.smoothing, self.min_score, skip_token)


DEFAULT_POLICY = SuffixDraftPolicy()
"""The defaults ``sam`` and ``history`` draft by (measured on math and code prompts: docs/benchmarks.md,
"Datastores"). The depth limit reaches 24 tokens on a match of 12 or more (it was 16; ``ngram`` reads 24 too):
``auto`` with the deeper limits, interleaved with the shallower in one process on the dev set's 13 categories (one
prompt each, two different prompt sets), was 1.6-4.5% faster on both models (SmolLM2 chat, Gemma 3 raw; tokens per
pass +0-3%): a match that keeps matching is what a reply copying its prompt looks like, and the budget takes the
deeper nodes only where their calibrated scores pay for them. 32 was slower on SmolLM2."""
