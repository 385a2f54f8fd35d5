"""The speculative loop: draft -> verify -> accept -> compact -> feedback.

Read it like gpt-fast's ``generate.py``: ``prefill`` fills the cache with the prompt, ``SpeculativeGenerator._step``
runs one round for a lone row (draft a tree, ``verify_tree`` through the model, score every node with the request's
logits processors, accept a path, ``commit`` it up to where the stopping criteria fire, learn), and ``generate``
resolves ``model.generate``'s arguments (``hf/generation.py``) and loops steps per row until a criterion stops it.
The stages of a step other than the pass are written once, in ``step.py`` (``Step``), which the batched loop
(``batch.py``) goes through too; a batch of rows is handed to ``batch.run_batch``.

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

from ..grammar.xgrammar_bridge import check_rows as check_processor_rows
from ..hf.attention import AttentionLayout, check_position_limit, inspect_model, tree_attention_mask, window_start
from ..hf.compat import cache_keyword
from ..hf.generation import (
    DecodingPlan,
    decoder_only_output,
    plan_from_arguments,
    processors_for_row,
    refuse_inputs_embeds,
    split_criteria,
)
from ..hf.kv_cache import keep_prefix_and, new_cache, windowed_layers, windowed_views
from .batch import run_batch
from .calibration import Calibrator
from .cost_curve import CostCurve, cost_curve_for
from .observed_costs import ObservedCosts
from .prefill import prefill
from .processing import StopRule
from .protocol import Drafter, RequestInfo, begin_request, end_request
from .shared_state import SharedState
from .stats import GenerationStats
from .step import RequestState, Step, new_row_state
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


def verify_tree(model, layout: AttentionLayout, cache, tree: DraftTree, prefix_len: int, want_hidden: bool,
                dtype: torch.dtype, device: torch.device, on=None,
                forward=None, windowed: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The verification pass: every node of ``tree`` (n nodes) through ``model`` in one forward, each attending to
    the ``prefix_len`` cached positions and its own ancestors (a tree mask), at position ``prefix_len + depth``.
    ``on``: the context the forward runs under, the engine's ``VerificationPaths.context`` of the path the cost curve
    found fastest for n nodes (default: the model as it is); ``forward``: what the pass calls with the model's
    keywords, the path's ``VerificationPaths.forward`` (default: ``model``).

    ``windowed``: sliding-window layers attend over the keys inside the window only (``kv_cache.windowed_views``)
    where the prefix reaches past it; the same result, less attention work. A compiled forward passes False: the
    view's start would be a new constant in its graph's guards every step.

    Appends the n nodes' keys/values to ``cache``. Returns logits float[n, V] (row i predicts the token after node
    i) and, when ``want_hidden``, last-layer hidden states float[n, H]."""
    depths = tree.depths
    ids = torch.from_numpy(tree.tokens).to(device)[None]
    positions = torch.from_numpy(depths.astype(np.int64) + prefix_len).to(device)[None]
    start = window_start(layout, prefix_len) if windowed else 0  # the root (depth 0) is the pass's first query
    layers = windowed_layers(cache, layout.sliding_layers) if start else None
    if layers is None:
        start = 0
    mask = tree_attention_mask(layout, tree.ancestor_mask(), depths, prefix_len, dtype, device, sliding_from=start)
    # the cost curve's passes give these same keywords (cost_curve.py), so a compiled forward's graph serves both
    with (windowed_views(layers, start) if start else nullcontext()), (on if on is not None else nullcontext()):
        out = (forward if forward is not None else model)(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            output_hidden_states=want_hidden,
            **{cache_keyword(model): cache},
        )
    hidden = out.hidden_states[-1][0] if want_hidden else None
    return out.logits[0], hidden


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
    ``compile``: also measure the compiled verification path and run each tree size on it where the cost curve
    finds it fastest (``fastpath/compiled.py``: ``torch.compile`` of the model's forward with its few-row products on
    the skinny kernel; CPU float32 only; the first passes compile for minutes on a small CPU, then SmolLM2's small-tree
    passes are 4-12% cheaper, docs/benchmarks.md); batched passes and prefills run the model as it is.

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
        compile: bool = False,
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
        self.layout: AttentionLayout = inspect_model(model, chains_ok=True)
        self.max_nodes = int(max_nodes)
        if self.max_nodes < 1:
            raise ValueError("max_nodes must be at least 1")
        self.adaptive = adaptive
        self.min_gain = float(min_gain)
        self.verbose = verbose
        # what this engine shares with its siblings (a fresh one for an engine of its own)
        if shared is None:
            shared = SharedState(model, cost_curve, compile=compile)
        elif compile and not shared.verification.compiled:
            raise ValueError("compile=True needs a SharedState built with compile=True (a sibling shares its own)")
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

    def path_for(self, n: int) -> str:
        """The verification path for an n-node pass: the cost curve's fastest at that size. A non-adaptive engine
        that was given no curve never measures one, and runs the model as it is."""
        if self._cost_curve is None and not self.adaptive:
            return "torch"
        return self.cost_curve.path_for(n)

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
        row through ``self.drafter``. A model that verifies chains only (``layout.chain_only``: ALiBi) gets None
        too: a batched pass would need a ragged 4-D mask, so its rows run alone."""
        if self.layout.chain_only is not None:
            return None
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
    def _step(self, state: RequestState, step: Step) -> None:
        """One round for a lone row, through ``step``'s stages (``engine/step.py``): draft -> verify over the row's
        own cache -> accept (scoring with the request's processors the nodes the walk reads) -> commit (compacting
        the cache) -> learn and feed back."""
        draft = step.draft(state, self.drafter)
        tree = draft.tree
        t1 = time.perf_counter()
        want_hidden = bool(self.drafter.wants_hidden_states)
        forward = step.pass_forward(len(tree))
        logits, hidden = verify_tree(self.model, self.layout, state.cache, tree, state.prefix_len, want_hidden,
                                     self.dtype, self.device, on=step.pass_context(len(tree)), forward=forward,
                                     windowed=forward is self.model)
        t2 = time.perf_counter()
        self._observe_cost(len(tree), (t2 - t1) * 1000)
        prefix_len = state.prefix_len
        acc, committed = step.accept_and_commit(state, tree, logits)
        keep_prefix_and(state.cache, prefix_len, torch.from_numpy(acc.accepted).to(self.device))
        t3 = time.perf_counter()
        step.learn(state, self.drafter, draft, acc, committed, logits, hidden, verify_ms=(t2 - t1) * 1000,
                   accept_ms=(t3 - t2) * 1000)

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
        check_processor_rows(plan.processors, batch)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        max_length, eos, others = split_criteria(plan.criteria)
        n_pad = (length - attention_mask.sum(dim=1)).tolist() if attention_mask is not None else [0] * batch
        rows_cpu = input_ids.cpu().numpy()
        drafters = self.row_drafters(batch) if batch > 1 else None
        self.last_batched = drafters is not None
        if drafters is not None:
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
            prefill(self.model, prompt, state.cache, self.device, self.layout)
            stats.prefill_ms = (time.perf_counter() - t0) * 1000
            info = info.for_processors(processors)
            begin_request(self.drafter, prompt, info)
        step = Step(self)
        while not state.finished:
            self._step(state, step)
        if max_new > 0:
            end_request(self.drafter, state.context[: state.length].copy(), info)
        stats.new_tokens = len(state.produced)
        stats.total_ms = (time.perf_counter() - t_start) * 1000
        return state
