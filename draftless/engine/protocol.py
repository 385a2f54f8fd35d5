"""The drafter protocol: how every source of guesses talks to the engine.

A drafter is told the prompt once (``begin``), asked for a tree each step (``draft``), and shown what the target
model verified (``feedback``). A root-only tree means "no guess": the step decodes exactly one token.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..grammar.processor import find_grammar
from .tree import DraftTree


@dataclass
class StepFeedback:
    """What one verification step established.

    - ``tree``: the tree that was verified (n nodes);
    - ``accepted``: int64[k+1] indices of the accepted nodes, root first (``accepted[0] == 0``);
    - ``new_tokens``: int64[m] tokens committed this step (accepted drafts then the bonus token, cut at EOS or at the
      token limit, so ``m <= k + 1``);
    - ``context``: int64[L] all committed tokens after this step (prompt + output). A view of the engine's own
      buffer, valid during the ``feedback`` call only: copy what you keep, and never write to it (the engine does
      not mark it read-only, to save a flag flip per step);
    - ``logits``: float[n, V] raw target logits at every verified node (row i predicts the token after node i);
    - ``hidden``: float[n, H] last-layer hidden states of the verified nodes, only when a drafter asks for them.
    """

    tree: DraftTree
    accepted: np.ndarray
    new_tokens: np.ndarray
    context: np.ndarray
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


@dataclass(frozen=True)
class RequestInfo:
    """What the engine tells drafters about one request (one row of one ``generate`` call) besides its tokens.

    - ``namespace``: whose memory the request may read and extend (a user, a tenant, a task; ``generate(...,
      namespace=...)``). Sources that remember across requests (the history store) draft for a namespace only
      from that namespace's own past requests; None is a namespace of its own (the default one).
    - ``grammar``: the ``draftless.grammar.Grammar`` the row's output must match (found among its logits
      processors, ``find_grammar``), or None. Drafters that read grammars draft what it forces.
    """

    namespace: str | None = None
    grammar: object | None = None

    def for_processors(self, processors) -> RequestInfo:
        """This info with the grammar that ``processors`` (a row's logits processors) enforce."""
        grammar = find_grammar(processors)
        return self if grammar is self.grammar else replace(self, grammar=grammar)


def begin_request(drafter, prompt_ids: np.ndarray, info: RequestInfo) -> None:
    """Start a request on ``drafter``: its ``begin_request(prompt_ids, info)`` when it has one, else the protocol's
    ``begin(prompt_ids)`` (drafters written against the minimal protocol need neither hook)."""
    hook = getattr(drafter, "begin_request", None)
    if hook is None:
        drafter.begin(prompt_ids)
    else:
        hook(prompt_ids, info)


def end_request(drafter, context: np.ndarray, info: RequestInfo) -> None:
    """Tell ``drafter`` a request finished (``context``: int64[L], prompt + every committed output token, a copy
    the drafter may keep); a no-op for drafters without an ``end_request`` hook."""
    hook = getattr(drafter, "end_request", None)
    if hook is not None:
        hook(context, info)


@runtime_checkable
class Drafter(Protocol):
    """Anything with these members can draft for the engine.

    ``draft(context, budget)``: ``context`` is int64[L], every committed token (prompt + output so far), read-only;
    the tree's root must be ``context[-1]``. ``budget`` is the most nodes (root included) the engine will verify
    this step; a drafter may return more (the engine prunes by score) or fewer.

    Optional capabilities (``BaseDrafter`` declares both False; the engine reads them as declared here):

    - ``wants_hidden_states``: True to receive ``StepFeedback.hidden`` (costs memory, not compute);
    - ``calibrates_scores``: True when the drafter already calibrates its own sources' scores (a fusion), so the
      engine applies only a neutral residual correction on top;
    - ``pinned_sources``: source names whose nodes the engine verifies whatever their scores, on top of the
      budget (a Jacobi window: verified for what its logits teach the drafter); ``()`` by default.

    Optional request hooks (the engine calls them through ``begin_request`` / ``end_request`` above):

    - ``begin_request(prompt_ids, info: RequestInfo)``: in place of ``begin`` when present (``BaseDrafter``'s calls
      ``begin``); composite drafters forward it to their sources;
    - ``end_request(context, info)``: once per finished request with its whole committed context (what a memory
      across requests records).

    ``runtime_checkable`` checks only that the members exist, not their types.
    """

    name: str
    wants_hidden_states: bool
    calibrates_scores: bool

    def begin(self, prompt_ids: np.ndarray) -> None: ...

    def draft(self, context: np.ndarray, budget: int) -> DraftTree: ...

    def feedback(self, step: StepFeedback) -> None: ...


class BaseDrafter:
    """Convenience base: no-op ``begin``/``feedback``, both capabilities off (see ``Drafter``); subclasses set
    ``name`` (a class default, or per instance through a ``name`` constructor argument) and implement ``draft``."""

    name = "base"
    wants_hidden_states = False
    calibrates_scores = False
    pinned_sources: tuple[str, ...] = ()

    def begin(self, prompt_ids: np.ndarray) -> None:
        pass

    def begin_request(self, prompt_ids: np.ndarray, info: RequestInfo) -> None:
        self.begin(prompt_ids)

    def end_request(self, context: np.ndarray, info: RequestInfo) -> None:
        pass

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:  # pragma: no cover - abstract
        raise NotImplementedError

    def feedback(self, step: StepFeedback) -> None:
        pass


class CompositeDrafter(BaseDrafter):
    """Base of drafters built from other drafters (fusion, selection, hybrid): every request hook goes to each
    source, in ``sources()`` order, so a source that keeps per-request or cross-request state (a history) sees
    every request whatever combinator holds it."""

    def sources(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin(self, prompt_ids: np.ndarray) -> None:
        self.begin_request(prompt_ids, RequestInfo())

    def begin_request(self, prompt_ids: np.ndarray, info: RequestInfo) -> None:
        for source in self.sources():
            begin_request(source, prompt_ids, info)

    def end_request(self, context: np.ndarray, info: RequestInfo) -> None:
        for source in self.sources():
            end_request(source, context, info)


class NullDrafter(BaseDrafter):
    """Never guesses: generation through the engine degenerates to plain one-token decoding."""

    name = "none"

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        return DraftTree.root_only(int(context[-1]))
