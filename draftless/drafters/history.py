"""``history``: drafts from what earlier requests of the same namespace held (SuffixDecoding-like).

At ``begin_request`` the drafter takes the request's namespace and that namespace's segments from a
``HistoryStore`` (draftless.history) and matches the prompt in each segment's suffix automaton; every step extends
those matches by the newly committed tokens (amortized O(1) per token and segment). A draft comes from the
segments with the longest matches (ties: the newest, so recent requests win), each a best-first tree over the
segment's transitions scored from occurrence counts (how often a continuation followed the match, see
``SuffixAutomaton.draft_tree``), merged by longest prefix. Matches become trees by the ``SuffixDraftPolicy``
(``suffix_policy.py``) the ``sam`` drafter drafts by too. At ``end_request`` the finished context is recorded into
the namespace's history (and saved, when the store has a path).

Nodes carry the source name ``history``, so the engine calibrates them apart from the request's own ``sam`` nodes.
Drafts never depend on another namespace: only ``store.segments(namespace)`` is read. Outputs never depend on the
history at all (verification keeps only what the target model produces); only speed does.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..engine.protocol import BaseDrafter, RequestInfo, StepFeedback
from ..engine.tree import DraftTree, merge_nonempty
from ..history.segment import SEPARATOR, Segment
from ..history.store import HistoryStore
from .suffix_policy import DEFAULT_POLICY, SuffixDraftPolicy

# ``accelerate``'s default: an in-memory history for the requests of ``auto`` that pass a namespace
AUTO_HISTORY = "auto"


class HistoryDrafter(BaseDrafter):
    """Draft trees from a ``HistoryStore`` (see the module docstring).

    - ``store``: the history (None: a fresh in-memory ``HistoryStore()``), shared by every request this drafter sees;
    - ``policy``: the ``SuffixDraftPolicy`` (``min_match``, the depth limit, ``top_k``, ``smoothing``,
      ``min_score``), as ``SamDrafter``'s; its fields may also be given as keywords (``min_match=3``), which override
      ``policy``'s;
    - ``max_segments``: segments whose trees are merged;
    - ``warmup_requests``: the drafter stays silent for a request whose namespace holds fewer past requests than
      this (the first requests of a deployment then draft exactly as the engine without a history does);
    - ``namespaced_only``: requests with no namespace (``namespace=None``) neither read nor extend the history
      (``accelerate``'s default history: only callers that say which requests belong together share one);
    - ``record``: add each finished request to the history.
    """

    name = "history"

    def __init__(self, store: HistoryStore | None = None, *, policy: SuffixDraftPolicy = DEFAULT_POLICY,
                 max_segments: int = 2, warmup_requests: int = 4, namespaced_only: bool = False, record: bool = True,
                 **policy_fields):
        self.store = store if store is not None else HistoryStore()
        self.policy = replace(policy, **policy_fields)
        self.max_segments = max(1, int(max_segments))
        self.warmup_requests = max(0, int(warmup_requests))
        self.namespaced_only = bool(namespaced_only)
        self.record = bool(record)
        self._segments: list[Segment] = []
        self._matches: list[tuple[int, int]] = []
        self._sizes: list[int] = []
        self._n_seen = 0
        self._last_token = -1

    # ------------------------------------------------------------------------------------------ request hooks
    def begin(self, prompt_ids: np.ndarray) -> None:
        self.begin_request(prompt_ids, RequestInfo())

    def begin_request(self, prompt_ids: np.ndarray, info: RequestInfo) -> None:
        # A snapshot of the segment list. A segment may still grow during this request when another request of
        # the namespace ends meanwhile (the rows of a batch): ``_sync`` then matches the context again.
        with self.store.lock:
            self._begin(prompt_ids, info)

    def _begin(self, prompt_ids: np.ndarray, info: RequestInfo) -> None:
        self._segments = [] if self._ignored(info) else self.store.segments(info.namespace)
        # Warm-up: an almost empty history drafts from one or two unrelated requests; measured, its few nodes then
        # displace better ones of the request's own text (the first requests of a stream ran up to 14% slower).
        # Below the threshold the request sees no segments at all, so its trees are the engine's without history.
        if sum(seg.n_requests for seg in self._segments) < self.warmup_requests:
            self._segments = []
        self._match_from_start(np.asarray(prompt_ids, dtype=np.int64).reshape(-1))

    def _ignored(self, info: RequestInfo) -> bool:
        return self.namespaced_only and info.namespace is None

    def end_request(self, context: np.ndarray, info: RequestInfo) -> None:
        if self.record and len(context) and not self._ignored(info):
            self.store.record(info.namespace, context)
        self._segments, self._matches, self._sizes = [], [], []

    def _match_from_start(self, tokens: np.ndarray) -> None:
        self._matches = [seg.sam.match(tokens) for seg in self._segments]
        self._sizes = [seg.n_tokens for seg in self._segments]
        self._n_seen = len(tokens)
        self._last_token = int(tokens[-1]) if len(tokens) else -1

    def _sync(self, context: np.ndarray) -> None:
        """Advance every segment's match over the tokens of ``context`` not seen yet; a context that does not
        continue the one seen so far is matched again from the start."""
        have = self._n_seen
        grown = any(seg.n_tokens != n for seg, n in zip(self._segments, self._sizes))
        # a grown automaton may have split the states the matches sit in: match from the start again
        if grown or have > len(context) or (have and int(context[have - 1]) != self._last_token):
            self._match_from_start(np.asarray(context))
            return
        if have < len(context) and self._segments:
            new = np.asarray(context[have:])
            self._matches = [seg.sam.match(new, s, n) for seg, (s, n) in zip(self._segments, self._matches)]
        self._n_seen = len(context)
        self._last_token = int(context[-1]) if len(context) else -1

    def feedback(self, step: StepFeedback) -> None:
        with self.store.lock:  # matching reads automata another thread's request may be extending
            self._sync(step.context)

    # ------------------------------------------------------------------------------------------ drafting
    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        with self.store.lock:  # the automata may be extended by another thread's request ending
            return self._draft(context, budget)

    def _draft(self, context: np.ndarray, budget: int) -> DraftTree:
        self._sync(context)
        root = int(context[-1])
        # Segments are newest first; a stable sort by decreasing match length keeps the newest among equals.
        order = sorted(range(len(self._segments)), key=lambda i: -self._matches[i][1])
        trees = []
        for i in order[: self.max_segments]:
            state, length = self._matches[i]
            if length < self.policy.min_match:
                break
            # The longest match may continue only into a request separator (it ended an earlier request): back
            # off to shorter suffixes, as the ``sam`` drafter does over a corpus.
            arrays = self.policy.draft_backing_off(self._segments[i].sam, state, length, budget, SEPARATOR)
            if arrays is not None:
                trees.append(DraftTree.from_arrays(root, *arrays, self.name))
        return merge_nonempty(root, trees, budget)


def history_store_for(history, tokenizer=None) -> HistoryStore | None:
    """What ``accelerate(history=...)`` means: None/False -> None (off); True -> a fresh in-memory store; a
    ``HistoryStore`` -> itself; a directory -> the store kept there (``HistoryStore.open``: reloaded now, saved
    after every request; ``tokenizer`` required, its identity is checked against the saved one)."""
    import os

    if history is None or history is False:
        return None
    if history is True:
        return HistoryStore()
    if isinstance(history, HistoryStore):
        return history
    if isinstance(history, (str, os.PathLike)):
        if tokenizer is None:
            raise ValueError(f"history={str(history)!r} keeps the history on disk and needs tokenizer=... (its "
                             f"identity is recorded and checked on reload)")
        from ..tokenizer_identity import tokenizer_identity

        return HistoryStore.open(history, tokenizer_identity(tokenizer))
    raise TypeError(f"history must be None, True, a directory or a HistoryStore, not {type(history).__name__}")
