"""One row's step, written once: draft -> (the caller's verification pass) -> accept and commit -> learn.

Read it like gpt-fast's ``generate.py``: a step is a few well-named functions. ``Step`` holds them for one engine;
every loop that decodes rows goes through them, so a row decodes the same whoever runs it:

- the one-row loop (``generator.py``, ``SpeculativeGenerator._step``): its pass is ``verify_tree`` over the row's
  own cache;
- the batched loop (``batch.py``, ``run_batch``): the rows' trees share one pass, ``verify_batch``;
- a replay of recorded greedy output without the target (``draftless.app.replay``): the recorded tokens decide what
  is accepted, and ``commit`` writes them.

The step's stages:

- ``ask``: the drafter's raw tree for the row, drafted on a read-only view of its committed tokens;
- ``size``: check the tree (``check_tree``), calibrate its scores and prune it to the budget the cost curve pays
  for; ``draft`` is ``ask`` then ``size``, timed;
- ``pass_context`` / ``pass_forward``: the context the verification pass of n nodes runs under, and what it calls
  (its fastest path);
- ``accept_and_commit``: score the nodes the walk reads with the row's logits processors, accept a path
  (greedy or sample-and-walk) and ``commit`` its tokens, cut by the stopping criteria;
- ``learn``: the row's stats, the engine's calibration and draft-time estimate, the streamer, the drafter's
  feedback.

What a row owns lives in its ``RequestState`` (below); what the engine learns across rows and requests lives in the
engine's ``SharedState``, which ``Step`` reads and updates under its lock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..hf.generation import DecodingPlan
from .accept import SOFTMAX, Acceptance, accept_greedy, accept_sampling
from .budget import best_size_for_scores
from .processing import StopRule, TreeScores
from .protocol import Drafter, StepFeedback
from .stats import GenerationStats
from .tree import DraftTree


@dataclass
class RequestState:
    """Everything one row of one ``generate`` call owns; nothing of it outlives the call.

    - ``full``: int64 buffer of the row as ``model.generate`` sees it: its left padding (``n_pad`` ids), then the
      committed tokens (prompt, then output), then scratch. ``context`` is the view past the padding: what the
      model and the drafter see; ``context[:length]`` are the committed tokens;
    - ``cache``: the KV cache of ``context[:length - 1]`` (see the invariant in ``generator.py``), or None when the
      row lives in a batch's shared cache (or in no cache: a replay);
    - ``produced``: the generated ids so far; ``finished``: a stopping criterion (or the token limit) fired;
    - ``processors``: the row's logits processors (empty: greedy on raw logits); ``sampling``: draw from the
      processed scores instead of taking their argmax; ``stop``: the ``StopRule``; ``generator``: the
      ``torch.Generator`` sampling draws from (None: the global one); ``streamer``: an HF-style streamer or None;
    - ``scores`` / ``raw_logits``: float32 [V] rows per generated token when the caller asked for them (else None);
    - ``stats``: this row's ``GenerationStats``.
    """

    full: np.ndarray
    n_pad: int
    length: int
    cache: object
    max_new_tokens: int
    processors: object
    sampling: bool
    stop: StopRule
    generator: torch.Generator | None
    streamer: object | None
    stats: GenerationStats
    scores: list | None = None
    raw_logits: list | None = None
    produced: list[int] = field(default_factory=list)
    finished: bool = False

    @property
    def context(self) -> np.ndarray:
        return self.full[self.n_pad:]

    @property
    def prefix_len(self) -> int:
        """Positions in the cache: every committed token but the last (the next tree's root)."""
        return self.length - 1

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.produced)

    @property
    def root(self) -> int:
        return int(self.context[self.length - 1])

    @property
    def history(self) -> np.ndarray:
        """The row's committed ids with its padding: what ``model.generate``'s processors and criteria see."""
        return self.full[: self.n_pad + self.length]

    @classmethod
    def greedy(cls, prompt: np.ndarray, max_new_tokens: int) -> RequestState:
        """A row that decodes ``prompt`` (int64[P], no padding, no cache) greedily on raw logits, stopped by the
        token limit alone: what a replay of recorded greedy output commits through."""
        prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
        max_new = max(0, int(max_new_tokens))
        full = np.empty(len(prompt) + max_new + 1, dtype=np.int64)
        full[: len(prompt)] = prompt
        state = cls(full=full, n_pad=0, length=len(prompt), cache=None, max_new_tokens=max_new, processors=(),
                    sampling=False, stop=StopRule(None, set(), None, torch.device("cpu")), generator=None,
                    streamer=None, stats=GenerationStats(prompt_tokens=len(prompt)))
        state.finished = max_new == 0
        return state


def new_row_state(padded_row: np.ndarray, n_pad: int, plan: DecodingPlan, processors, stop: StopRule, streamer,
                  generator: torch.Generator | None, cache) -> RequestState:
    """A row's ``RequestState`` before its prefill (``padded_row``: int64[P] with ``n_pad`` leading padding ids;
    ``cache``: the row's own cache, or None when the row lives in a batch's shared one)."""
    prompt_len = len(padded_row) - n_pad
    max_new = max(0, plan.max_length - len(padded_row))
    full = np.empty(len(padded_row) + max_new + 1, dtype=np.int64)
    full[: len(padded_row)] = padded_row
    state = RequestState(full=full, n_pad=n_pad, length=prompt_len, cache=cache, max_new_tokens=max_new,
                         processors=processors, sampling=plan.do_sample, stop=stop, generator=generator,
                         streamer=streamer, stats=GenerationStats(prompt_tokens=prompt_len),
                         scores=[] if plan.output_scores else None, raw_logits=[] if plan.output_logits else None)
    state.finished = max_new == 0
    return state


def commit(state: RequestState, tree: DraftTree, acc: Acceptance) -> list[int]:
    """Commit an accepted path: its tokens after the root plus the bonus, cut by the stopping
    criteria exactly where one-token decoding would stop (each token checked in turn, the one that fires kept, as
    ``model.generate`` keeps its EOS), appended to the row. The cache is the caller's to compact.

    Returns the committed tokens and sets ``state.finished`` when generation is over."""
    committed = [int(t) for t in tree.tokens[acc.accepted[1:]]] + [acc.bonus]
    committed = committed[: state.remaining]
    start = state.n_pad + state.length
    state.full[start: start + len(committed)] = committed
    kept, stop = state.stop.cut(state.full, start, committed)
    committed = committed[:kept]
    if stop or len(state.produced) + len(committed) >= state.max_new_tokens:
        state.finished = True
    state.length += len(committed)
    state.produced.extend(committed)
    return committed


def check_tree(tree: DraftTree, root: int, vocab_size: int, drafter: str) -> None:
    """O(n) checks of a drafted tree before it becomes a mask: aligned 1-D arrays, ``parents[0] == -1``,
    ``0 <= parents[i] < i``, the root at ``root``, every token inside ``[0, vocab_size)``. A broken drafter gets a
    ``ValueError`` naming it, never a wrong mask or an embedding ``IndexError``."""
    def fail(why: str):
        raise ValueError(f"drafter {drafter!r} returned an invalid tree: {why}")

    tokens, parents = np.asarray(tree.tokens), np.asarray(tree.parents)
    n = tokens.shape[0] if tokens.ndim == 1 else -1
    if n < 1 or parents.shape != (n,) or np.asarray(tree.scores).shape != (n,) \
            or np.asarray(tree.source_mask).shape != (n,):
        fail(f"tokens, parents, scores and source_mask must be aligned 1-D arrays of n >= 1 nodes (tokens "
             f"{tokens.shape}, parents {parents.shape})")
    if not (np.issubdtype(tokens.dtype, np.integer) and np.issubdtype(parents.dtype, np.integer)):
        fail(f"tokens and parents must be integer arrays (got {tokens.dtype}, {parents.dtype})")
    if parents[0] != -1:
        fail(f"parents[0] must be -1 (the root), got {int(parents[0])}")
    bad = np.flatnonzero((parents[1:] < 0) | (parents[1:] >= np.arange(1, n)))
    if len(bad):
        i = int(bad[0]) + 1
        fail(f"node {i} has parent {int(parents[i])}; parents must satisfy 0 <= parents[i] < i")
    if int(tokens[0]) != root:
        fail(f"rooted at token {int(tokens[0])}, expected the last committed token {root}")
    out = np.flatnonzero((tokens < 0) | (tokens >= vocab_size))
    if len(out):
        fail(f"node {int(out[0])} holds token {int(tokens[out[0]])}, outside the vocabulary [0, {vocab_size})")


@dataclass
class Draft:
    """A drafted tree, ready to verify.

    - ``tree``: the tree to verify (checked, calibrated, pruned to its budget);
    - ``raw``: what the drafter returned (a batch row whose pass is padded anyway re-sizes it, ``Step.draft(raw=)``);
    - ``observation``: ``(calibrator, calibrated full tree, its keys)`` for the calibrator's ``observe`` once the
      committed tokens are known, or None when the engine does not calibrate (or the tree is root-only);
    - ``ms``: the time asking and sizing took."""

    tree: DraftTree
    raw: DraftTree
    observation: tuple | None
    ms: float


class Step:
    """The stages of one row's step for ``engine`` (a ``SpeculativeGenerator``; see the module docstring). It keeps
    nothing of its own: limits and options are the engine's (``max_nodes``, ``adaptive``, ``min_gain``,
    ``vocab_size``), and what the step learns goes to the engine's shared state (``calibrator``,
    ``draft_ms_estimate``, under ``shared.lock``)."""

    def __init__(self, engine):
        self.engine = engine

    # ------------------------------------------------------------------ draft
    def ask(self, state: RequestState, drafter: Drafter) -> DraftTree:
        """The drafter's raw tree for the row, drafted on a read-only view of its committed tokens."""
        view = state.context[: state.length]
        view.flags.writeable = False
        try:
            return drafter.draft(view, self.engine.max_nodes)
        finally:
            view.flags.writeable = True

    def size(self, tree: DraftTree, state: RequestState, drafter: Drafter, rows: int = 1,
             min_size: int = 1) -> tuple[DraftTree, tuple | None]:
        """Check, calibrate and prune a drafted ``tree`` for the row: what a step verifies.

        ``rows``: how many rows share the verification pass (see ``SpeculativeGenerator.budget_curve``);
        ``min_size``: keep at least this many nodes where the tree has them, for a batch row whose pass is padded
        to that size anyway.

        Returns the tree to verify and the calibrator's observation (``Draft.observation``): the calibrator learns
        from every drafted node, pruned ones included (the committed tokens say what the target wanted there), so a
        source whose guesses are all pruned still gets the observations that can bring it back."""
        engine = self.engine
        check_tree(tree, state.root, engine.vocab_size, drafter.name)
        if len(tree) == 1:
            return tree, None
        observation = None
        calibrator = engine.calibrator
        if calibrator is not None:
            with engine.shared.lock:
                tree, keys = calibrator.calibrate(tree)
            observation = (calibrator, tree, keys)
        # A model that verifies chains only (ALiBi, ``AttentionLayout.chain_only``) gets the tree's best path,
        # chosen on calibrated scores; nothing is pinned off that path.
        chains_only = engine.layout.chain_only is not None
        if chains_only:
            tree = tree.subset(tree.best_path_indices())
        # A step commits at most depth + 1 tokens: nodes deeper than the remaining budget are wasted work.
        # Pinned nodes (a drafter's ``pinned_sources``, e.g. a Jacobi window) are verified on top of the budget.
        remaining = state.remaining
        pinned = None if chains_only else tree.pinned_mask(getattr(drafter, "pinned_sources", ()))
        keep = tree.prune_indices(engine.max_nodes, max_depth=remaining - 1, pinned=pinned)
        if engine.adaptive and len(keep) > 1:
            n_pinned = 0 if pinned is None else int(pinned[keep].sum())
            scored = keep[1:] if pinned is None else keep[1:][~pinned[keep[1:]]]
            size = best_size_for_scores(tree.scores[scored], engine.budget_curve(rows),
                                        draft_ms=engine.draft_ms_estimate, max_nodes=engine.max_nodes,
                                        min_gain=engine.min_gain, extra_nodes=n_pinned)
            size = max(size, min(int(min_size), engine.max_nodes))
            keep = tree.prune_indices(size, max_depth=remaining - 1, pinned=pinned)
        if len(keep) < len(tree):
            tree = tree.subset(keep)
        return tree, observation

    def draft(self, state: RequestState, drafter: Drafter, rows: int = 1, min_size: int = 1,
              raw: DraftTree | None = None) -> Draft:
        """``ask`` the drafter (unless ``raw``, an earlier answer for this step, is given), then ``size`` the tree;
        timed in ``Draft.ms``."""
        t0 = time.perf_counter()
        if raw is None:
            raw = self.ask(state, drafter)
        tree, observation = self.size(raw, state, drafter, rows, min_size)
        return Draft(tree, raw, observation, (time.perf_counter() - t0) * 1000)

    # ------------------------------------------------------------------ verify
    def pass_context(self, n: int):
        """The context a verification pass of ``n`` nodes runs under: the engine's ``VerificationPaths`` context of
        the path its cost curve found fastest for that many nodes (``SpeculativeGenerator.path_for``)."""
        return self.engine.verification.context(self.engine.path_for(n))

    def pass_forward(self, n: int):
        """What a single-row verification pass of ``n`` nodes calls with the model's keywords (under
        ``pass_context(n)``): the compiled forward where the cost curve runs that size on the "compiled" path,
        else the model."""
        return self.engine.verification.forward(self.engine.path_for(n))

    # ------------------------------------------------------------------ accept
    @staticmethod
    def accept_and_commit(state: RequestState, tree: DraftTree, logits: torch.Tensor) -> tuple[Acceptance, list[int]]:
        """Score (the row's processors, lazily), accept and ``commit`` the row's tokens for one verified tree
        (``logits``: float[n, V]); the cache is the caller's to compact."""
        if state.processors or state.sampling or state.scores is not None:
            scores = TreeScores(state.processors, state.history, tree, logits)  # scored as the walk reads nodes
        else:
            scores = logits  # greedy without processors: the argmax of the raw logits is the argmax of their cast
        if state.sampling:
            acc = accept_sampling(tree, scores, SOFTMAX, state.generator)
        else:
            acc = accept_greedy(tree, scores)
        committed = commit(state, tree, acc)
        if state.scores is not None:
            state.scores.extend(scores.rows(acc.accepted[: len(committed)]).unbind(0))
        if state.raw_logits is not None:
            state.raw_logits.extend(logits[acc.accepted[: len(committed)]].float().unbind(0))
        return acc, committed

    # ------------------------------------------------------------------ learn
    def learn(self, state: RequestState, drafter: Drafter, draft: Draft, acc: Acceptance, committed: list[int],
              logits: torch.Tensor | None, hidden: torch.Tensor | None, verify_ms: float, accept_ms: float) -> None:
        """After a row's commit: its stats, the engine's draft-time estimate and calibration, the streamer, and the
        drafter's feedback (while the row goes on). ``logits`` / ``hidden``: the verified nodes' rows, for the
        feedback (None where there were none: a replay)."""
        engine, stats, tree = self.engine, state.stats, draft.tree
        with engine.shared.lock:
            engine.draft_ms_estimate = 0.9 * engine.draft_ms_estimate + 0.1 * draft.ms
        stats.steps += 1
        stats.draft_ms += draft.ms
        stats.verify_ms += verify_ms
        stats.accept_ms += accept_ms
        stats.record_tree(tree, acc.accepted)
        if draft.observation is not None:
            calibrator, tree_seen, keys = draft.observation
            with engine.shared.lock:
                calibrator.observe(tree_seen, keys, committed)
        if state.streamer is not None:
            state.streamer.put(torch.tensor(committed, dtype=torch.long))
        if not state.finished:
            t0 = time.perf_counter()
            drafter.feedback(
                StepFeedback(
                    tree=tree,
                    accepted=acc.accepted,
                    new_tokens=np.asarray(committed, dtype=np.int64),
                    context=state.context[: state.length],
                    logits=logits,
                    hidden=hidden,
                )
            )
            stats.feedback_ms += (time.perf_counter() - t0) * 1000
