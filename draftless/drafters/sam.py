"""``sam``: SAM-Decoding style drafting from suffix automata (training-free, lossless once verified).

Two automata answer "what followed the longest suffix of the context before?":

- a *dynamic* one over this request's prompt + generated text, built in ``begin`` and extended with every step's
  committed tokens. Its longest repeated suffix is free: the suffix link of the last state (O(1) per step);
- optionally a *static* one loaded (memory-mapped) from a ``"sam"`` datastore (``draftless build --kind sam``);
  its match ``(state, length)`` is advanced by ``sam_step`` over the newly committed tokens only.

Each match of at least ``min_match`` tokens becomes a best-first tree over the automaton's transitions (the
continuation of the longest match plus branches to other frequent continuations), scored from occurrence counts,
with a depth limit that grows with the match length.

How the two automata share a step's budget is ``static_policy``:

- ``"fuse"``: both trees are merged by longest prefix and pruned to budget. The static tree's nodes carry their own
  source name, so the engine's calibrator learns a corpus continuation's acceptance apart from a
  context continuation's: counts from a large corpus are not the same currency as counts from this request;
- ``"longer"`` (SAM-Decoding's selection): the static tree is drafted only when its match is longer than the
  dynamic one's, so a corpus never crowds out what this request itself repeats;
- ``"fallback"`` (the default): the static tree is drafted only when the context has no match of ``min_match``
  tokens at all. Measured on math and code prompts with GSM8K and stdlib + MBPP stores, on both shipped models, it
  was as fast as or faster than ``"fuse"`` and context-only drafting everywhere (README, "Corpus retrieval"): a
  repeat inside the request beats a corpus match, and a corpus fills the steps that would otherwise draft nothing.

The static tree's source name is ``sam:<store directory name>``, the dynamic tree's ``sam``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree, merge_nonempty
from ..index.suffix_automaton import SuffixAutomaton
from ..stores.datastore import tokenizer_identity as _tokenizer_identity


class SamDrafter(BaseDrafter):
    """Suffix-automaton drafter (see the module docstring).

    - ``store_path``: a ``"sam"`` datastore for the static automaton (None: dynamic only);
    - ``tokenizer``: the target's tokenizer; when given, a store built with another tokenizer is refused;
    - ``use_dynamic``: also draft from the request's own text;
    - ``static_policy``: ``"fallback"``, ``"fuse"`` or ``"longer"`` (see the module docstring);
    - ``min_match``: shortest match (tokens) that drafts anything; ``static_min_match`` for the datastore;
    - depth limit ``clip(depth_per_match * match_length, min_depth, max_depth)``: longer matches earn longer drafts;
    - ``top_k``: continuations considered per node; ``smoothing``: prior pseudo-count (scaled by 2/match length)
      against over-trusting few occurrences; ``min_score``: nodes below this estimated acceptance are not drafted.
    """

    name = "sam"
    STATIC_POLICIES = ("fuse", "longer", "fallback")

    def __init__(self, store_path: str | os.PathLike | None = None, tokenizer=None, *, use_dynamic: bool = True,
                 min_match: int = 2, static_min_match: int = 2, min_depth: int = 4, max_depth: int = 16,
                 depth_per_match: float = 2.0, top_k: int = 3, smoothing: float = 1.0, min_score: float = 0.02,
                 static_policy: str = "fallback", verify: str = "size"):
        if static_policy not in self.STATIC_POLICIES:
            raise ValueError(f"static_policy must be one of {self.STATIC_POLICIES}, not {static_policy!r}")
        self.static_policy = static_policy
        self.use_dynamic = use_dynamic
        self.min_match = max(1, int(min_match))
        self.static_min_match = max(1, int(static_min_match))
        self.min_depth, self.max_depth = int(min_depth), int(max_depth)
        self.depth_per_match = float(depth_per_match)
        self.top_k = int(top_k)
        self.smoothing = float(smoothing)
        self.min_score = float(min_score)
        self.static: SuffixAutomaton | None = None
        self.static_name = ""
        self._separator = -1
        if store_path is not None:
            self.static_name = f"sam:{Path(store_path).resolve().name}"
            identity = _tokenizer_identity(tokenizer) if tokenizer is not None else None
            self.static = SuffixAutomaton.load(store_path, mmap=True, tokenizer_identity=identity, verify=verify)
            sep = (self.static.store_meta or {}).get("separator_id")
            self._separator = -1 if sep is None else int(sep)
        self.dynamic: SuffixAutomaton | None = None
        self._n_seen = 0
        self._last_token = -1
        self._static_match = (0, 0)

    # ------------------------------------------------------------------------------------------ state
    def begin(self, prompt_ids: np.ndarray) -> None:
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        # Room for a typical generation so extending rarely reallocates.
        self.dynamic = SuffixAutomaton.build(prompt, reserve=max(256, len(prompt))) if self.use_dynamic else None
        self._static_match = self.static.match(prompt) if self.static is not None else (0, 0)
        self._n_seen = len(prompt)
        self._last_token = int(prompt[-1]) if len(prompt) else -1

    def _sync(self, context: np.ndarray) -> None:
        """Absorb the tokens of ``context`` not seen yet; a context that is not a continuation restarts."""
        have = self._n_seen
        if have > len(context) or (have and int(context[have - 1]) != self._last_token) or (
                self.dynamic is None and self.use_dynamic):
            self.begin(context)
            return
        if have < len(context):
            new = np.asarray(context[have:])
            if self.dynamic is not None:
                self.dynamic.extend(new)
            if self.static is not None:
                self._static_match = self.static.match(new, *self._static_match)
            self._n_seen = len(context)
            self._last_token = int(context[-1])

    def feedback(self, step: StepFeedback) -> None:
        self._sync(step.context)

    # ------------------------------------------------------------------------------------------ drafting
    def _depth(self, match_len: int) -> int:
        return int(min(self.max_depth, max(self.min_depth, round(self.depth_per_match * match_len))))

    def _tree(self, sam: SuffixAutomaton, root: int, state: int, length: int, budget: int, skip: int,
              source: str) -> DraftTree:
        tokens, parents, scores = sam.draft_tree(state, length, budget, self._depth(length), self.top_k,
                                                 self.smoothing, self.min_score, skip)
        return DraftTree.from_arrays(root, tokens, parents, scores, source)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        self._sync(context)
        root = int(context[-1])
        trees = []
        dynamic_len = 0
        if self.dynamic is not None:
            state, dynamic_len = self.dynamic.longest_repeated_suffix()
            if dynamic_len >= self.min_match:
                trees.append(self._tree(self.dynamic, root, state, dynamic_len, budget, -1, self.name))
        if self.static is not None:
            state, length = self._static_match
            if trees and (self.static_policy == "fallback"
                          or (self.static_policy == "longer" and length <= dynamic_len)):
                return trees[0]
            # The longest match may have no usable continuation (corpus end, document separator): back off to
            # shorter suffixes (suffix links) a few times.
            arrays = self.static.draft_tree_backing_off(state, length, self.static_min_match, budget, self._depth,
                                                        self.top_k, self.smoothing, self.min_score, self._separator)
            if arrays is not None:
                trees.append(DraftTree.from_arrays(root, *arrays, self.static_name))
        return merge_nonempty(root, trees, budget)
