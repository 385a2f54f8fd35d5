"""The speculative loop: draft -> verify -> accept -> compact -> feedback.

Read it like gpt-fast's ``generate.py``: ``prefill`` fills the cache with the prompt, ``SpeculativeGenerator._step``
runs one round (draft a tree, ``verify_tree`` through the model, score every node with the request's logits
processors, accept a path, ``commit`` it up to where the stopping criteria fire), and ``generate`` resolves
``model.generate``'s arguments (``hf/generation.py``) and loops steps per row until a criterion stops it.

Invariant between steps: the KV cache holds every committed token but the last; the last committed token is the
root of the next draft tree, so each verification pass also computes the root's own logits and no pass is spent
on the bonus token alone.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ..hf.attention import AttentionLayout, check_position_limit, inspect_model, tree_attention_mask
from ..hf.compat import cache_keyword
from ..hf.generation import (
    DecodingPlan,
    decoder_only_output,
    plan_from_arguments,
    processors_for_row,
    refuse_inputs_embeds,
    split_criteria,
)
from ..hf.kv_cache import keep_prefix_and, new_cache
from .accept import SOFTMAX, Acceptance, accept_greedy, accept_sampling
from .budget import best_size_for_scores
from .calibration import Calibrator
from .cost_curve import CostCurve, cost_curve_for
from .observed_costs import ObservedCosts
from .processing import StopRule, TreeScores
from .protocol import Drafter, RequestInfo, StepFeedback, begin_request, end_request
from .shared_state import SharedState
from .stats import GenerationStats
from .tree import DraftTree

# the info of a request that passes none (the default namespace); RequestInfo is frozen, so one instance serves all
_DEFAULT_INFO = RequestInfo()


@dataclass
class GenerationResult:
    """``sequences``: int64 [B, P + new] like ``model.generate`` (on the model's device; a batch keeps its left
    padding and fills finished rows with ``pad_token_id``); ``new_tokens``: the generated ids (``list[int]`` for
    one row, ``list[list[int]]`` for a batch); ``stats``: the run's ``GenerationStats`` (a batch's rows summed;
    per row in ``row_stats``)."""

    sequences: torch.Tensor
    new_tokens: list
    stats: GenerationStats = field(default_factory=GenerationStats)
    row_stats: list[GenerationStats] = field(default_factory=list)


@dataclass
class RequestState:
    """Everything one row of one ``generate`` call owns; nothing of it outlives the call.

    - ``full``: int64 buffer of the row as ``model.generate`` sees it: its left padding (``n_pad`` ids), then the
      committed tokens (prompt, then output), then scratch. ``context`` is the view past the padding: what the
      model and the drafter see; ``context[:length]`` are the committed tokens;
    - ``cache``: the KV cache of ``context[:length - 1]`` (see the module invariant);
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


def prefill(model, prompt: np.ndarray, cache, device: torch.device) -> None:
    """Run ``prompt[:-1]`` (int64[P]) through ``model`` into ``cache``; the last prompt token is left for the first
    tree's root. Only the last position's logits are computed (and dropped)."""
    if len(prompt) > 1:
        prefix = torch.from_numpy(prompt[:-1]).to(device)[None]
        model(input_ids=prefix, **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)


def verify_tree(model, layout: AttentionLayout, cache, tree: DraftTree, prefix_len: int, want_hidden: bool,
                dtype: torch.dtype, device: torch.device, on=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The verification pass: every node of ``tree`` (n nodes) through ``model`` in one forward, each attending to
    the ``prefix_len`` cached positions and its own ancestors (a tree mask), at position ``prefix_len + depth``.
    ``on``: the context the forward runs under, the engine's ``VerificationPaths.context`` of the path the cost curve
    found fastest for n nodes (default: the model as it is).

    Appends the n nodes' keys/values to ``cache``. Returns logits float[n, V] (row i predicts the token after node
    i) and, when ``want_hidden``, last-layer hidden states float[n, H]."""
    depths = tree.depths
    ids = torch.from_numpy(tree.tokens).to(device)[None]
    positions = torch.from_numpy(depths.astype(np.int64) + prefix_len).to(device)[None]
    mask = tree_attention_mask(layout, tree.ancestor_mask(), depths, prefix_len, dtype, device)
    with on if on is not None else nullcontext():
        out = model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            output_hidden_states=want_hidden,
            **{cache_keyword(model): cache},
        )
    hidden = out.hidden_states[-1][0] if want_hidden else None
    return out.logits[0], hidden


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


class SpeculativeGenerator:
    """A model paired with a drafter. Build it with ``draftless.accelerate``.

    ``max_nodes``: the most tree nodes (root included) one pass may verify. ``adaptive``: choose each step's tree
    size from the measured cost curve and calibrated scores (see ``budget.py``); when False every step verifies up
    to ``max_nodes`` nodes. ``cost_curve``: pass one to skip measuring (it is then used as given unless
    ``learn_costs=True``). ``min_gain``: verify a tree only when its expected speed beats plain decoding by this
    factor (a margin for misestimated scores). ``drafter_factory``: a
    callable returning a fresh, independent drafter like ``drafter``; with one, the rows of a batch are verified
    together (``engine/batch.py``), each row drafting with its own instance (built on first need, then kept for
    later calls); without one (a ``Drafter`` object passed alone) a batch runs row by row through ``drafter``.

    State that outlives a request (learned across ``generate`` calls, on purpose: later requests start from what
    earlier ones measured; ``reset_learning()`` forgets it):

    - ``calibrator``: per source/depth/confidence multipliers that turn draft scores into acceptance probabilities
      (None with ``calibrate=False``);
    - ``draft_ms_estimate``: a running average of one draft call's time in ms, charged to every non-empty tree when
      choosing its size;
    - the cost curve (measured once, or given), which ``reset_learning`` keeps: it describes the hardware;
    - with ``learn_costs`` (default: on when the engine measured its own curve), the observed cost of its passes
      (``engine/observed_costs.py``): trees are sized on ``running_cost_curve``, the measured curve corrected by
      what the passes took, which ``reset_learning`` also keeps.

    Everything else a request needs lives in its ``RequestState``.

    Thread contract: the drafter keeps its own per-request state (``begin`` resets it), so one engine serves one
    request at a time: a second ``generate`` while one is running (another thread, a streamer calling back in)
    raises ``RuntimeError``. For concurrent requests give each thread its own engine from ``sibling()``: siblings
    share the model, its verification paths and packed weights, the cost curve and everything learned above
    (``SharedState``, under a lock), and nothing a pass does is visible to other threads (the fast paths are active
    in the passing thread only; the model and its config are never changed). ``draftless.custom_generate`` keeps
    such a pool per model for you. History stores may be shared by any number of engines and threads.
    """

    def __init__(
        self,
        model,
        drafter: Drafter,
        max_nodes: int = 32,
        adaptive: bool = True,
        cost_curve: CostCurve | None = None,
        calibrate: bool = True,
        min_gain: float = 1.03,
        verbose: bool = False,
        drafter_factory=None,
        learn_costs: bool | None = None,
        shared: SharedState | None = None,
    ):
        if not isinstance(drafter, Drafter):
            raise TypeError(f"{type(drafter).__name__} does not implement the Drafter protocol (name, begin, draft, "
                            "feedback, wants_hidden_states, calibrates_scores; BaseDrafter provides the defaults)")
        self.model = model
        self.drafter = drafter
        if drafter_factory is not None and not callable(drafter_factory):
            raise TypeError("drafter_factory must be a callable that returns a fresh Drafter")
        self.drafter_factory = drafter_factory
        # one drafter per batch row (row 0 is ``drafter``), built by the factory on first need and kept, so a
        # drafter that loads a store or a model does so once per row slot, not once per call
        self._row_drafters: list[Drafter] = [drafter]
        self._budget_curves: dict[int, tuple[CostCurve, CostCurve]] = {}  # rows -> (curve it came from, share)
        self.layout: AttentionLayout = inspect_model(model)
        self.max_nodes = int(max_nodes)
        if self.max_nodes < 1:
            raise ValueError("max_nodes must be at least 1")
        self.adaptive = adaptive
        self.min_gain = float(min_gain)
        self.verbose = verbose
        # what this engine shares with its siblings (a fresh one for an engine of its own)
        if shared is None:
            shared = SharedState(model, cost_curve)
        elif cost_curve is not None and shared.cost_curve is None:
            shared.cost_curve = cost_curve
        self.shared = shared
        # learn what passes really cost (engine/observed_costs.py): by default only on a curve the engine measured
        # itself; a curve passed in is the caller's statement of the costs and is used as given
        self.learn_costs = (cost_curve is None) if learn_costs is None else bool(learn_costs)
        self._calibrate = calibrate
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # ids at or past the embedding's size would be an IndexError inside the model: checked before it sees them
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self._running = threading.Lock()  # held while a request runs (see the thread contract)
        self.last_stats: GenerationStats | None = None  # the latest run's stats (a batch's rows summed)
        self.last_row_stats: list[GenerationStats] = []
        self.last_batched = False  # whether the latest run verified its rows together (engine/batch.py)
        if shared.calibrator is None and shared.draft_ms_estimate == 0.0:
            self.reset_learning()

    def sibling(self) -> SpeculativeGenerator:
        """Another engine for the same model and settings, with a fresh drafter from ``drafter_factory``, sharing
        this engine's ``SharedState`` (cost curve, packed weights, calibration, draft-time estimate): the engine for
        a concurrent request in another thread (see the thread contract)."""
        if self.drafter_factory is None:
            raise RuntimeError("sibling() needs a drafter_factory to build the new engine's drafter (accelerate() "
                               "with a spec string has one; a Drafter object passed alone has none)")
        drafter = self.drafter_factory()
        return SpeculativeGenerator(self.model, drafter, max_nodes=self.max_nodes, adaptive=self.adaptive,
                                    calibrate=self._calibrate, min_gain=self.min_gain, verbose=self.verbose,
                                    drafter_factory=self.drafter_factory, learn_costs=self.learn_costs,
                                    shared=self.shared)

    @property
    def verification(self):
        """The model's ``VerificationPaths`` (shared with this engine's siblings)."""
        return self.shared.verification

    @property
    def calibrator(self) -> Calibrator | None:
        return self.shared.calibrator

    @calibrator.setter
    def calibrator(self, value: Calibrator | None) -> None:
        self.shared.calibrator = value

    @property
    def draft_ms_estimate(self) -> float:
        return self.shared.draft_ms_estimate

    @draft_ms_estimate.setter
    def draft_ms_estimate(self, value: float) -> None:
        self.shared.draft_ms_estimate = float(value)

    @property
    def _cost_curve(self) -> CostCurve | None:
        return self.shared.cost_curve

    def reset_learning(self) -> None:
        """Forget what earlier requests taught the engine (and its siblings): a fresh calibrator and no draft-time
        estimate. The cost curve is kept (it describes the hardware, not the requests); the drafter's own state is
        the drafter's."""
        with self.shared.lock:
            if not self._calibrate:
                self.calibrator = None
            elif self.drafter.calibrates_scores:
                # A drafter that calibrates its own sources (a fusion) only needs a neutral residual correction here.
                self.calibrator = Calibrator(prior_ratio=1.0)
            else:
                self.calibrator = Calibrator()
            self.draft_ms_estimate = 0.0  # running estimate of one draft call, charged to every non-empty tree

    @property
    def cost_curve(self) -> CostCurve:
        shared = self.shared
        curve = shared.cost_curve
        if curve is not None and shared.prepared_for is curve:
            return curve
        with shared.lock:  # one sibling measures (or prepares); the others wait for its curve
            if shared.cost_curve is None:
                shared.cost_curve = cost_curve_for(self.model, self.layout, verbose=self.verbose,
                                                   verification=self.verification)
            if shared.prepared_for is not shared.cost_curve:
                # the packed weight copies are worth their memory only where the curve runs the packed path; where
                # it does, they are made now (a curve read from the cache or passed in has not made them)
                self.verification.prepare(shared.cost_curve.paths)
                shared.prepared_for = shared.cost_curve
            return shared.cost_curve

    @cost_curve.setter
    def cost_curve(self, curve: CostCurve) -> None:
        with self.shared.lock:
            self.shared.cost_curve = curve

    @property
    def running_cost_curve(self) -> CostCurve:
        """The curve trees are sized on: ``cost_curve`` corrected by what this engine's single-row passes took
        (``ObservedCosts``), or ``cost_curve`` itself when ``learn_costs`` is off."""
        return self._observer().curve() if self.learn_costs else self.cost_curve

    def _observer(self) -> ObservedCosts:
        """The ``ObservedCosts`` of the current measured curve (a new one when the curve was replaced)."""
        curve = self.cost_curve
        with self.shared.lock:
            observed = self.shared.observed
            if observed is None or observed.measured is not curve:
                observed = self.shared.observed = ObservedCosts(curve)
            return observed

    @property
    def observed_passes(self) -> int:
        """How many passes ``running_cost_curve`` has learnt from (0 when ``learn_costs`` is off)."""
        observed = self.shared.observed
        return observed.n_observed if self.learn_costs and observed is not None else 0

    def _observe_cost(self, n: int, ms: float) -> None:
        """A single-row pass of ``n`` nodes took ``ms``: teach the running curve (when learning)."""
        if self.learn_costs:  # only the observer: the corrected curve is rebuilt when the next tree is sized
            observer = self._observer()
            with self.shared.lock:
                observer.observe(n, ms)

    def _path_for(self, n: int) -> str:
        """The verification path for an n-node pass: the cost curve's fastest at that size. A non-adaptive engine
        that was given no curve never measures one, and runs the model as it is."""
        if self._cost_curve is None and not self.adaptive:
            return "torch"
        return self.cost_curve.path_for(n)

    def _pass_context(self, n: int):
        """The context an n-node verification pass runs under: its path's, from ``_path_for``."""
        return self.verification.context(self._path_for(n))

    # ------------------------------------------------------------------ draft
    def prepare_tree(self, tree: DraftTree, root: int, remaining: int, drafter: Drafter | None = None,
                     rows: int = 1, min_size: int = 1) -> tuple[DraftTree, tuple | None]:
        """Calibrate and prune a drafted tree, exactly as a step of this engine does before verifying it (public for
        tools that replay drafts without the target, such as ``scripts/replay_stream.py``).

        ``root``: the last committed token; ``remaining``: tokens the request may still generate; ``rows``: how many
        rows share the verification pass (see ``budget_curve``); ``min_size``: keep at least this many nodes where
        the tree has them, for a batch row whose pass is padded to that size anyway.

        Returns the tree to verify and, when calibrating, ``(calibrator, calibrated full tree, its keys)`` for its
        ``observe``:
        the calibrator learns from every drafted node, pruned ones included (the committed tokens say what the
        target wanted there), so a source whose guesses are all pruned still gets the observations that can
        bring it back.
        """
        check_tree(tree, root, self.vocab_size, (drafter or self.drafter).name)
        if len(tree) == 1:
            return tree, None
        observation = None
        calibrator = self.calibrator
        if calibrator is not None:
            with self.shared.lock:
                tree, keys = calibrator.calibrate(tree)
            observation = (calibrator, tree, keys)
        # A step commits at most depth + 1 tokens: nodes deeper than the remaining budget are wasted work.
        # Pinned nodes (a drafter's ``pinned_sources``, e.g. a Jacobi window) are verified on top of the budget.
        pinned = tree.pinned_mask(getattr(drafter or self.drafter, "pinned_sources", ()))
        keep = tree.prune_indices(self.max_nodes, max_depth=remaining - 1, pinned=pinned)
        if self.adaptive and len(keep) > 1:
            n_pinned = 0 if pinned is None else int(pinned[keep].sum())
            scored = keep[1:] if pinned is None else keep[1:][~pinned[keep[1:]]]
            size = best_size_for_scores(tree.scores[scored], self.budget_curve(rows),
                                        draft_ms=self.draft_ms_estimate, max_nodes=self.max_nodes,
                                        min_gain=self.min_gain, extra_nodes=n_pinned)
            size = max(size, min(int(min_size), self.max_nodes))
            keep = tree.prune_indices(size, max_depth=remaining - 1, pinned=pinned)
        if len(keep) < len(tree):
            tree = tree.subset(keep)
        return tree, observation

    def _draft(self, state: RequestState, drafter: Drafter | None = None,
               rows: int = 1) -> tuple[DraftTree, tuple | None]:
        """Ask the row's drafter (default: ``self.drafter``) for a tree on a read-only view of the committed tokens,
        then calibrate and prune it (``rows``: rows sharing the pass)."""
        drafter = drafter or self.drafter
        return self.prepare_tree(self._ask(state, drafter), state.root, state.remaining, drafter, rows)

    def _ask(self, state: RequestState, drafter: Drafter) -> DraftTree:
        """The drafter's raw tree for the row, drafted on a read-only view of its committed tokens."""
        view = state.context[: state.length]
        view.flags.writeable = False
        try:
            return drafter.draft(view, self.max_nodes)
        finally:
            view.flags.writeable = True

    def budget_curve(self, rows: int = 1) -> CostCurve:
        """The cost curve a row's tree is sized on when ``rows`` rows share each pass: a row's share of a pass in
        which every row verifies n nodes, t(rows * n) / rows (the single-row curve for one row). Rows verified
        together pay for each other's nodes, so on a curve that rises with n a batch row gets a smaller tree than a
        lone request; root-only is then rated t(rows) / rows, what plain batched decoding costs a row."""
        curve = self.running_cost_curve
        if rows <= 1:
            return curve
        cached = self._budget_curves.get(rows)
        if cached is None or cached[0] is not curve:
            sizes = sorted({1} | {s // rows for s in curve.sizes if s >= rows})
            ms = [float(curve.cost(rows * s)) / rows for s in sizes]
            cached = (curve, CostCurve(tuple(sizes), tuple(ms)))
            self._budget_curves[rows] = cached
        return cached[1]

    def row_drafters(self, batch: int) -> list[Drafter] | None:
        """``batch`` independent drafters, one per row (the first is ``self.drafter``), or None when the engine has
        no ``drafter_factory`` to build more (a ``Drafter`` object was passed alone): then a batch runs row by
        row through ``self.drafter``."""
        if batch > len(self._row_drafters):
            if self.drafter_factory is None:
                return None
            while len(self._row_drafters) < batch:
                drafter = self.drafter_factory()
                if not isinstance(drafter, Drafter):
                    raise TypeError(f"drafter_factory returned {type(drafter).__name__}, not a Drafter")
                self._row_drafters.append(drafter)
        return self._row_drafters[:batch]


    # ------------------------------------------------------------------ one step
    def _step(self, state: RequestState) -> None:
        """One round: draft -> verify -> accept (scoring with the request's processors the nodes the walk reads)
        -> commit (compacting the cache) -> learn and feed back."""
        t0 = time.perf_counter()
        tree, observation = self._draft(state)
        t1 = time.perf_counter()
        want_hidden = bool(self.drafter.wants_hidden_states)
        logits, hidden = verify_tree(self.model, self.layout, state.cache, tree, state.prefix_len, want_hidden,
                                     self.dtype, self.device, on=self._pass_context(len(tree)))
        t2 = time.perf_counter()
        self._observe_cost(len(tree), (t2 - t1) * 1000)
        prefix_len = state.prefix_len
        acc, committed = self._accept_and_commit(state, tree, logits)
        keep_prefix_and(state.cache, prefix_len, torch.from_numpy(acc.accepted).to(self.device))
        t3 = time.perf_counter()
        self._learn(state, self.drafter, tree, acc, committed, observation, logits, hidden,
                    draft_ms=(t1 - t0) * 1000, verify_ms=(t2 - t1) * 1000, accept_ms=(t3 - t2) * 1000)

    def _accept_and_commit(self, state: RequestState, tree: DraftTree, logits: torch.Tensor
                           ) -> tuple[Acceptance, list[int]]:
        """Score (the row's processors, lazily), accept and commit the row's tokens for one verified tree
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

    def _learn(self, state: RequestState, drafter: Drafter, tree: DraftTree, acc: Acceptance, committed: list[int],
               observation, logits: torch.Tensor, hidden: torch.Tensor | None, draft_ms: float, verify_ms: float,
               accept_ms: float) -> None:
        """After a row's commit: its stats, the calibrator's observation, the streamer, the drafter's feedback."""
        stats = state.stats
        with self.shared.lock:
            self.draft_ms_estimate = 0.9 * self.draft_ms_estimate + 0.1 * draft_ms
        stats.steps += 1
        stats.draft_ms += draft_ms
        stats.verify_ms += verify_ms
        stats.accept_ms += accept_ms
        stats.record_tree(tree, acc.accepted)
        if observation is not None:
            calibrator, tree_seen, keys = observation
            with self.shared.lock:
                calibrator.observe(tree_seen, keys, committed)
        if state.streamer is not None:
            state.streamer.put(torch.tensor(committed, dtype=torch.long))
        if not state.finished:
            t4 = time.perf_counter()
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
            stats.feedback_ms += (time.perf_counter() - t4) * 1000

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def generate(self, input_ids=None, generation_config=None, logits_processor=None, stopping_criteria=None, *,
                 attention_mask=None, streamer=None, tokenizer=None, generator: torch.Generator | None = None,
                 namespace: str | None = None, **kwargs):
        """``model.generate``'s call, through the speculative loop: same arguments, same result.

        ``input_ids``: int [B, P] (or [P]; ``inputs=`` is accepted too) with left padding for B > 1;
        ``attention_mask``: int/bool [B, P] of ones, or left padding (zeros then ones per row), else a
        ``ValueError``. ``generation_config``, ``logits_processor``, ``stopping_criteria``, ``streamer``,
        ``tokenizer`` (for ``stop_strings``) and every ``GenerationConfig`` keyword (``max_new_tokens``,
        ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id``, ``repetition_penalty``, ...) mean
        what they mean for ``model.generate``, resolved by the same transformers methods (``hf/generation.py``):
        keyword > ``generation_config`` > ``model.generation_config`` > transformers' defaults. Options that change
        the search (beams, contrastive search, ``num_return_sequences > 1``, assisted decoding, ...) raise
        ``UnsupportedGenerationOption`` naming the option before any model work. ``generator``: a
        ``torch.Generator`` for sampling (draftless' addition; default: torch's global one, like transformers).
        ``namespace``: whose memory across requests this call reads and extends (draftless' addition; see
        ``RequestInfo``); outputs never depend on it, only speed does.

        Greedy output is token-identical to ``model.generate``; sampled output has its distribution. Returns a
        ``GenerationResult`` (``sequences`` on the model's device, stats), or with ``return_dict_in_generate=True``
        transformers' ``GenerateDecoderOnlyOutput`` (``sequences``, plus ``scores`` / ``logits`` when asked). The
        run's stats are also in ``self.last_stats``. ``max_new_tokens=0`` returns the prompt (``model.generate``
        refuses it).

        Batches (B > 1) are verified together, one model pass per step over every unfinished row's tree, each row
        with its own drafter (``engine/batch.py``; needs a ``drafter_factory``, else the rows run one after
        another), and are assembled as ``model.generate`` assembles them (left padding kept, finished rows filled
        with ``pad_token_id``).
        """
        refuse_inputs_embeds(kwargs)
        with self._one_request():
            if input_ids is None:
                input_ids = kwargs.pop("inputs", None)
            ids, mask = self._checked_inputs(input_ids, attention_mask)
            if kwargs.get("max_new_tokens") == 0:
                return self._empty_result(ids, streamer)
            plan = plan_from_arguments(self.model, ids, mask, generation_config, logits_processor,
                                       stopping_criteria, tokenizer, kwargs)
            return self.decode(ids, mask, plan, streamer=streamer, generator=generator, as_result=True,
                               info=RequestInfo(namespace=namespace))

    @torch.inference_mode()
    def generate_from_plan(self, input_ids, attention_mask, plan: DecodingPlan, streamer=None,
                           generator: torch.Generator | None = None, namespace: str | None = None):
        """``generate`` for a caller that resolved ``model.generate``'s arguments itself (``custom_generate``:
        transformers did). Same input checks and one-request guard; returns what ``decode`` returns."""
        with self._one_request():
            ids, mask = self._checked_inputs(input_ids, attention_mask)
            return self.decode(ids, mask, plan, streamer=streamer, generator=generator,
                               info=RequestInfo(namespace=namespace))

    @contextmanager
    def _one_request(self):
        """The one-request-at-a-time guard (see the class docstring)."""
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this SpeculativeGenerator is already generating: one engine serves one request at a "
                               "time (its drafter and cache state are per request); give each concurrent request "
                               "its own engine with engine.sibling(), or call model.generate(custom_generate="
                               "draftless.custom_generate), which keeps a pool of them")
        try:
            # the fast paths' routing hooks stay on the model for the request, switched on per pass (in this thread)
            with self.verification.attached():
                yield
        finally:
            self._running.release()

    def _empty_result(self, ids: torch.Tensor, streamer) -> GenerationResult:
        if streamer is not None:
            streamer.put(ids.cpu())
            streamer.end()
        rows = [GenerationStats(prompt_tokens=ids.shape[1]) for _ in range(ids.shape[0])]
        self.last_stats, self.last_row_stats = GenerationStats.combined(rows), rows
        new = [] if ids.shape[0] == 1 else [[] for _ in range(ids.shape[0])]
        return GenerationResult(ids, new, self.last_stats, rows)

    def _checked_inputs(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``input_ids`` as int64 [B, P] on the model's device and the mask as int64 [B, P] (or None), after the
        checks ``model.generate`` leaves to an embedding ``IndexError`` or to silently wrong output."""
        if input_ids is None:
            raise ValueError("generate() needs input_ids ([B, P] token ids)")
        ids = torch.as_tensor(input_ids)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
            raise ValueError(f"input_ids must hold at least one token (shape [B, P] or [P], P >= 1), got shape "
                             f"{tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        ids = ids.to(self.device, torch.int64)
        outside = (ids < 0) | (ids >= self.vocab_size)
        if bool(outside.any()):
            row, col = (int(v) for v in outside.nonzero()[0])
            raise ValueError(f"input_ids[{row}, {col}] = {int(ids[row, col])} is outside the model's vocabulary "
                             f"[0, {self.vocab_size})")
        if attention_mask is None:
            return ids, None
        mask = torch.as_tensor(attention_mask)
        if mask.dim() != 2 or tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask must be 2-D with the shape of input_ids {tuple(ids.shape)}, got "
                             f"{tuple(mask.shape)}")
        mask = mask.to(self.device, torch.int64)
        if bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 and 1")
        # left padding: each row is zeros then ones, so it never decreases and ends in a 1
        if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask[:, -1] == 0).any()):
            bad = int(((mask[:, 1:] < mask[:, :-1]).any(dim=1) | (mask[:, -1] == 0)).nonzero()[0])
            raise ValueError(f"attention_mask row {bad} is not left padding (zeros, then ones to the end): "
                             "draftless supports all-ones masks and left-padded batches (padding_side='left')")
        return ids, mask

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, plan: DecodingPlan,
               streamer=None, generator: torch.Generator | None = None, as_result: bool = False,
               info: RequestInfo = _DEFAULT_INFO):
        """The loop for resolved arguments (both entry points end here): ``input_ids`` int64 [B, P] and
        ``attention_mask`` int64 [B, P] or None, checked, on the model's device; ``plan``: a ``DecodingPlan``.

        B > 1 with one drafter per row (``row_drafters``): the batched loop (``engine/batch.py``); else each row
        runs alone without its padding. A row's processors and criteria see it with its padding, as
        ``model.generate``'s do. Returns ``GenerateDecoderOnlyOutput`` when the plan asks for a dict, else the
        ``sequences`` tensor (``as_result``: a ``GenerationResult``)."""
        batch, length = input_ids.shape
        if batch > 1 and streamer is not None:
            raise ValueError("a streamer takes one sequence (transformers' streamers refuse batches too): pass one "
                             "row, or no streamer")
        if batch > 1 and (plan.output_scores or plan.output_logits):
            raise ValueError("output_scores / output_logits are supported for one row only: rows commit different "
                             "numbers of tokens per step, so a batch has no per-step [B, V] scores to return")
        check_position_limit(self.model, length, plan.max_length)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        max_length, eos, others = split_criteria(plan.criteria)
        n_pad = (length - attention_mask.sum(dim=1)).tolist() if attention_mask is not None else [0] * batch
        rows_cpu = input_ids.cpu().numpy()
        drafters = self.row_drafters(batch) if batch > 1 else None
        self.last_batched = drafters is not None
        if drafters is not None:
            from .batch import run_batch  # the batched loop; one row keeps the single-row path (cheaper there)

            t_batch = time.perf_counter()
            states = run_batch(self, rows_cpu, [int(p) for p in n_pad], plan, drafters, generator, info,
                               lambda: StopRule(max_length, eos, others, self.device))
        else:
            states = []
            for r in range(batch):
                stop = StopRule(max_length, eos, others, self.device)
                processors = processors_for_row(plan.processors, r)
                states.append(self._run_row(rows_cpu[r], int(n_pad[r]), plan, processors, stop, streamer,
                                            generator, info))
        if streamer is not None:
            streamer.end()

        rows = [s.stats for s in states]
        self.last_row_stats, self.last_stats = rows, GenerationStats.combined(rows)
        if drafters is not None:  # rows ran at the same time: the run took the call's time, not the rows' sum
            self.last_stats.total_ms = (time.perf_counter() - t_batch) * 1000
        new = max(len(s.produced) for s in states)
        pad = plan.pad_token_id if plan.pad_token_id is not None else 0
        sequences = torch.full((batch, length + new), pad, dtype=torch.int64)
        for r, s in enumerate(states):
            sequences[r, : length + len(s.produced)] = torch.from_numpy(s.full[: length + len(s.produced)])
        sequences = sequences.to(self.device)
        if plan.return_dict:
            scores = tuple(x[None] for x in states[0].scores) if plan.output_scores else None
            logits = tuple(x[None] for x in states[0].raw_logits) if plan.output_logits else None
            return decoder_only_output(sequences, scores, logits)
        if not as_result:
            return sequences
        produced = [s.produced for s in states]
        return GenerationResult(sequences, produced[0] if batch == 1 else produced, self.last_stats, rows)

    def _run_row(self, padded_row: np.ndarray, n_pad: int, plan: DecodingPlan, processors, stop: StopRule,
                 streamer, generator, info: RequestInfo = _DEFAULT_INFO) -> RequestState:
        """Decode one row (``padded_row``: int64[P], ``n_pad`` leading padding ids) until a criterion stops it."""
        t_start = time.perf_counter()
        state = new_row_state(padded_row, n_pad, plan, processors, stop, streamer, generator, new_cache())
        prompt, stats, max_new = state.context[: state.length].copy(), state.stats, state.max_new_tokens
        if not state.finished:
            t0 = time.perf_counter()
            prefill(self.model, prompt, state.cache, self.device)
            stats.prefill_ms = (time.perf_counter() - t0) * 1000
            begin_request(self.drafter, prompt, info)
        while not state.finished:
            self._step(state)
        if max_new > 0:
            end_request(self.drafter, state.context[: state.length].copy(), info)
        stats.new_tokens = len(state.produced)
        stats.total_ms = (time.perf_counter() - t_start) * 1000
        return state
