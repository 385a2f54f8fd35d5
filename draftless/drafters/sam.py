"""``sam``: SAM-Decoding style drafting from suffix automata (training-free, lossless once verified).

Two automata answer "what followed the longest suffix of the context before?":

- a *dynamic* one over this request's prompt + generated text, built in ``begin`` and extended with every step's
  committed tokens. Its longest repeated suffix is free: the suffix link of the last state (O(1) per step);
- optionally a *static* one loaded (memory-mapped) from a ``"sam"`` datastore (``draftless build --kind sam``);
  its match ``(state, length)`` is advanced by ``sam_step`` over the newly committed tokens only.

Each match of at least ``min_match`` tokens becomes a best-first tree over the automaton's transitions (the
continuation of the longest match plus branches to other frequent continuations), scored from occurrence counts,
with a depth limit that grows with the match length: the ``SuffixDraftPolicy`` (``suffix_policy.py``) that the
``history`` drafter drafts by too.

How the two automata share a step's budget is ``static_policy``:

- ``"fuse"``: both trees are merged by longest prefix and pruned to budget. The static tree's nodes carry their own
  source name, so the engine's calibrator learns a corpus continuation's acceptance apart from a
  context continuation's: counts from a large corpus are not the same currency as counts from this request;
- ``"longer"`` (SAM-Decoding's selection): the static tree is drafted only when its match is longer than the
  dynamic one's, so a corpus never crowds out what this request itself repeats;
- ``"fallback"`` (the default): the static tree is drafted only when the context has no match of ``min_match``
  tokens at all. Measured on math and code prompts with GSM8K and stdlib + MBPP stores, on both shipped models, it
  was as fast as or faster than ``"fuse"`` and context-only drafting everywhere (docs/benchmarks.md, "Datastores"): a
  repeat inside the request beats a corpus match, and a corpus fills the steps that would otherwise draft nothing.

The static tree's source name is ``sam:<store directory name>``, the dynamic tree's ``sam``.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree, merge_nonempty
from ..index.suffix_automaton import SuffixAutomaton
from ..stores.indexes import load_index
from ..tokenizer_identity import tokenizer_identity as _tokenizer_identity
from .suffix_policy import DEFAULT_POLICY, SuffixDraftPolicy


class SamDrafter(BaseDrafter):
    """Suffix-automaton drafter (see the module docstring).

    - ``store_path``: a ``"sam"`` datastore for the static automaton (None: dynamic only);
    - ``tokenizer``: the target's tokenizer; when given, a store built with another tokenizer is refused;
    - ``use_dynamic``: also draft from the request's own text;
    - ``static_policy``: ``"fallback"``, ``"fuse"`` or ``"longer"`` (see the module docstring);
    - ``policy``: the ``SuffixDraftPolicy`` (``min_match``, the depth limit, ``top_k``, ``smoothing``,
      ``min_score``); its fields may also be given as keywords (``min_match=3``), which override ``policy``'s;
    - ``static_min_match``: the shortest match in the datastore that drafts.
    """

    name = "sam"
    STATIC_POLICIES = ("fuse", "longer", "fallback")

    def __init__(self, store_path: str | os.PathLike | None = None, tokenizer=None, *, use_dynamic: bool = True,
                 policy: SuffixDraftPolicy = DEFAULT_POLICY, static_min_match: int = 2,
                 static_policy: str = "fallback", verify: str = "size", **policy_fields):
        if static_policy not in self.STATIC_POLICIES:
            raise ValueError(f"static_policy must be one of {self.STATIC_POLICIES}, not {static_policy!r}")
        self.static_policy = static_policy
        self.use_dynamic = use_dynamic
        self.policy = replace(policy, **policy_fields)
        self.static_min_match = max(1, int(static_min_match))
        self.static: SuffixAutomaton | None = None
        self.static_name = ""
        self._separator = -1
        if store_path is not None:
            self.static_name = f"sam:{Path(store_path).resolve().name}"
            identity = _tokenizer_identity(tokenizer) if tokenizer is not None else None
            self.static = load_index(SuffixAutomaton, store_path, tokenizer_identity=identity, verify=verify, mmap=True)
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

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        self._sync(context)
        root = int(context[-1])
        trees = []
        dynamic_len = 0
        if self.dynamic is not None:
            state, dynamic_len = self.dynamic.longest_repeated_suffix()
            if dynamic_len >= self.policy.min_match:
                tokens, parents, scores = self.policy.draft(self.dynamic, state, dynamic_len, budget)
                trees.append(DraftTree.from_arrays(root, tokens, parents, scores, self.name))
        if self.static is not None:
            state, length = self._static_match
            if trees and (self.static_policy == "fallback"
                          or (self.static_policy == "longer" and length <= dynamic_len)):
                return trees[0]
            # The longest match may have no usable continuation (corpus end, document separator): back off to
            # shorter suffixes (suffix links) a few times.
            arrays = self.policy.draft_backing_off(self.static, state, length, budget, self._separator,
                                                   min_match=self.static_min_match)
            if arrays is not None:
                trees.append(DraftTree.from_arrays(root, *arrays, self.static_name))
        return merge_nonempty(root, trees, budget)
