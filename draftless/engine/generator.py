"""The speculative loop: draft -> verify -> accept -> compact -> feedback.

Read it like gpt-fast's ``generate.py``: ``prefill`` fills the cache with the prompt, ``SpeculativeGenerator._step``
runs one round (draft a tree, ``verify_tree`` through the model, accept a path, ``commit`` it), and ``generate`` loops
steps until the token limit or EOS.

Invariant between steps: the KV cache holds every committed token but the last; the last committed token is the
root of the next draft tree, so each verification pass also computes the root's own logits and no pass is spent
on the bonus token alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .accept import Acceptance, SamplingWarper, accept_greedy, accept_sampling
from .budget import best_tree_size
from .calibration import Calibrator
from .cost_curve import CostCurve, cost_curve_for
from .protocol import Drafter, StepFeedback
from .stats import GenerationStats
from .tree import DraftTree
from ..fastpath import path_context
from ..hf.attention import AttentionLayout, inspect_model, tree_attention_mask
from ..hf.kv_cache import keep_prefix_and, new_cache


@dataclass
class GenerationResult:
    """``sequences``: int64 [1, prompt + new] like ``model.generate``; ``new_tokens``: the generated ids."""

    sequences: torch.Tensor
    new_tokens: list[int]
    stats: GenerationStats = field(default_factory=GenerationStats)


def _eos_set(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.generation_config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, (int, np.integer)):
        return {int(eos_token_id)}
    if isinstance(eos_token_id, torch.Tensor):
        return {int(x) for x in eos_token_id.flatten().tolist()}
    return {int(x) for x in eos_token_id}


@dataclass
class RequestState:
    """Everything one ``generate`` call owns; nothing of it outlives the call.

    - ``context``: int64[P + max_new_tokens + 1] buffer; ``context[:length]`` are the committed tokens (prompt, then
      output); the tail is scratch;
    - ``cache``: the KV cache of ``context[:length - 1]`` (see the module invariant);
    - ``produced``: the generated ids so far; ``finished``: the token limit or an EOS was reached;
    - ``eos``: ids that end generation; ``warper``: the sampling warper, None for greedy; ``generator``: the
      ``torch.Generator`` sampling draws from (None: the global one); ``streamer``: an HF-style streamer or None;
    - ``stats``: this request's ``GenerationStats``.
    """

    context: np.ndarray
    length: int
    cache: object
    max_new_tokens: int
    eos: set[int]
    warper: SamplingWarper | None
    generator: torch.Generator | None
    streamer: object | None
    stats: GenerationStats
    produced: list[int] = field(default_factory=list)
    finished: bool = False

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


def prefill(model, prompt: np.ndarray, cache, device: torch.device) -> None:
    """Run ``prompt[:-1]`` (int64[P]) through ``model`` into ``cache``; the last prompt token is left for the first
    tree's root. Only the last position's logits are computed (and dropped)."""
    if len(prompt) > 1:
        prefix = torch.from_numpy(prompt[:-1]).to(device)[None]
        model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)


def verify_tree(model, layout: AttentionLayout, cache, tree: DraftTree, prefix_len: int, want_hidden: bool,
                dtype: torch.dtype, device: torch.device, path: str = "torch",
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The verification pass: every node of ``tree`` (n nodes) through ``model`` in one forward, each attending to
    the ``prefix_len`` cached positions and its own ancestors (a tree mask), at position ``prefix_len + depth``.
    ``path``: the verification path (``draftless.fastpath.PATHS``) the cost curve found fastest for n nodes.

    Appends the n nodes' keys/values to ``cache``. Returns logits float[n, V] (row i predicts the token after node
    i) and, when ``want_hidden``, last-layer hidden states float[n, H]."""
    depths = tree.depths
    ids = torch.from_numpy(tree.tokens).to(device)[None]
    positions = torch.from_numpy(depths.astype(np.int64) + prefix_len).to(device)[None]
    mask = tree_attention_mask(layout, tree.ancestor_mask(), depths, prefix_len, dtype, device)
    with path_context(path, device, dtype):
        out = model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
    hidden = out.hidden_states[-1][0] if want_hidden else None
    return out.logits[0], hidden


def commit(state: RequestState, tree: DraftTree, acc: Acceptance, device: torch.device) -> list[int]:
    """Commit an accepted path: its tokens after the root plus the bonus, cut at the token limit and after the
    first EOS; compact the cache to the committed prefix plus the accepted nodes; append to the context.

    Returns the committed tokens and sets ``state.finished`` when generation is over."""
    committed = [int(t) for t in tree.tokens[acc.accepted[1:]]] + [acc.bonus]
    committed = committed[: state.remaining]
    for i, tok in enumerate(committed):
        if tok in state.eos:
            committed = committed[: i + 1]
            state.finished = True
            break
    if len(state.produced) + len(committed) >= state.max_new_tokens:
        state.finished = True
    keep_prefix_and(state.cache, state.prefix_len, torch.from_numpy(acc.accepted).to(device))
    state.context[state.length: state.length + len(committed)] = committed
    state.length += len(committed)
    state.produced.extend(committed)
    return committed


class SpeculativeGenerator:
    """A model paired with a drafter. Build it with ``draftless.accelerate``.

    ``max_nodes``: the most tree nodes (root included) one pass may verify. ``adaptive``: choose each step's tree
    size from the measured cost curve and calibrated scores (see ``budget.py``); when False every step verifies up
    to ``max_nodes`` nodes. ``cost_curve``: pass one to skip measuring. ``min_gain``: verify a tree only when its
    expected speed beats plain decoding by this factor (a margin for misestimated scores).

    State that outlives a request (learned across ``generate`` calls, on purpose: later requests start from what
    earlier ones measured; ``reset_learning()`` forgets it):

    - ``calibrator``: per source/depth/confidence multipliers that turn draft scores into acceptance probabilities
      (None with ``calibrate=False``);
    - ``draft_ms_estimate``: a running average of one draft call's time in ms, charged to every non-empty tree when
      choosing its size;
    - the cost curve (measured once, or given), which ``reset_learning`` keeps: it describes the hardware.

    Everything else a request needs lives in its ``RequestState``. The drafter keeps its own per-request state
    (``begin`` resets it), so one engine serves one request at a time: a second ``generate`` while one is running
    (another thread, a streamer calling back in) raises ``RuntimeError``. Use one engine per concurrent request.
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
    ):
        if not isinstance(drafter, Drafter):
            raise TypeError(f"{type(drafter).__name__} does not implement the Drafter protocol (name, begin, draft, "
                            "feedback, wants_hidden_states, calibrates_scores; BaseDrafter provides the defaults)")
        self.model = model
        self.drafter = drafter
        self.layout: AttentionLayout = inspect_model(model)
        self.max_nodes = int(max_nodes)
        if self.max_nodes < 1:
            raise ValueError("max_nodes must be at least 1")
        self.adaptive = adaptive
        self.min_gain = float(min_gain)
        self.verbose = verbose
        self._cost_curve = cost_curve
        self._calibrate = calibrate
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._running = False
        self.reset_learning()

    def reset_learning(self) -> None:
        """Forget what earlier requests taught the engine: a fresh calibrator and no draft-time estimate. The cost
        curve is kept (it describes the hardware, not the requests); the drafter's own state is the drafter's."""
        if not self._calibrate:
            self.calibrator: Calibrator | None = None
        elif self.drafter.calibrates_scores:
            # A drafter that calibrates its own sources (a fusion) only needs a neutral residual correction here.
            self.calibrator = Calibrator(prior_ratio=1.0)
        else:
            self.calibrator = Calibrator()
        self.draft_ms_estimate = 0.0  # running estimate of one draft call, charged to every non-empty tree

    @property
    def cost_curve(self) -> CostCurve:
        if self._cost_curve is None:
            self._cost_curve = cost_curve_for(self.model, self.layout, verbose=self.verbose)
        return self._cost_curve

    def _path_for(self, n: int) -> str:
        """The verification path for an n-node pass: the cost curve's fastest at that size. A non-adaptive engine
        that was given no curve never measures one, and runs the model as it is."""
        if self._cost_curve is None and not self.adaptive:
            return "torch"
        return self.cost_curve.path_for(n)

    # ------------------------------------------------------------------ draft
    def _prepare_tree(self, tree: DraftTree, root: int, remaining: int) -> tuple[DraftTree, tuple | None]:
        """Calibrate and prune a drafted tree.

        Returns the tree to verify and, when calibrating, ``(calibrated full tree, its keys)`` for ``observe``:
        the calibrator learns from every drafted node, pruned ones included (the committed tokens say what the
        target wanted there), so a source whose guesses are all pruned still gets the observations that can
        bring it back.
        """
        if tree.root_token != root:
            raise ValueError(f"drafter {self.drafter.name!r} returned a tree rooted at {tree.root_token}, expected {root}")
        if len(tree) == 1:
            return tree, None
        observation = None
        if self.calibrator is not None:
            tree, keys = self.calibrator.calibrate(tree)
            observation = (tree, keys)
        # A step commits at most depth + 1 tokens: nodes deeper than the remaining budget are wasted work.
        keep = tree.prune_indices(self.max_nodes, max_depth=remaining - 1)
        if self.adaptive and len(keep) > 1:
            size = best_tree_size(tree.subset(keep), self.cost_curve, draft_ms=self.draft_ms_estimate,
                                  max_nodes=self.max_nodes, min_gain=self.min_gain)
            keep = tree.prune_indices(size, max_depth=remaining - 1)
        if len(keep) < len(tree):
            tree = tree.subset(keep)
        return tree, observation

    def _draft(self, state: RequestState) -> tuple[DraftTree, tuple | None]:
        """Ask the drafter for a tree on a read-only view of the committed tokens, then calibrate and prune it."""
        view = state.context[: state.length]
        view.flags.writeable = False
        try:
            tree = self.drafter.draft(view, self.max_nodes)
        finally:
            view.flags.writeable = True
        return self._prepare_tree(tree, state.root, state.remaining)

    # ------------------------------------------------------------------ one step
    def _step(self, state: RequestState) -> None:
        """One round: draft -> verify -> accept -> commit (compacting the cache) -> learn and feed back."""
        stats = state.stats
        t0 = time.perf_counter()
        tree, observation = self._draft(state)
        t1 = time.perf_counter()
        want_hidden = bool(self.drafter.wants_hidden_states)
        logits, hidden = verify_tree(self.model, self.layout, state.cache, tree, state.prefix_len, want_hidden,
                                     self.dtype, self.device, path=self._path_for(len(tree)))
        t2 = time.perf_counter()
        if state.warper is None:
            acc = accept_greedy(tree, logits)
        else:
            acc = accept_sampling(tree, logits, state.warper, state.generator)
        committed = commit(state, tree, acc, self.device)
        t3 = time.perf_counter()

        self.draft_ms_estimate = 0.9 * self.draft_ms_estimate + 0.1 * (t1 - t0) * 1000
        stats.steps += 1
        stats.draft_ms += (t1 - t0) * 1000
        stats.verify_ms += (t2 - t1) * 1000
        stats.accept_ms += (t3 - t2) * 1000
        stats.record_tree(tree, acc.accepted)
        if observation is not None:
            self.calibrator.observe(*observation, committed)
        if state.streamer is not None:
            state.streamer.put(torch.tensor(committed, dtype=torch.long))
        if not state.finished:
            t4 = time.perf_counter()
            self.drafter.feedback(
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
    def generate(
        self,
        input_ids,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id=None,
        streamer=None,
        generator: torch.Generator | None = None,
    ) -> GenerationResult:
        """Generate up to ``max_new_tokens`` tokens after ``input_ids`` (int64 [1, P] or [P]).

        Greedy output equals ``model.generate(do_sample=False)``; sampled output has the distribution of
        ``model.generate(do_sample=True, temperature=..., top_k=..., top_p=...)``. ``eos_token_id`` defaults to the
        model's generation config; generation stops after the first EOS it emits.
        """
        if self._running:
            raise RuntimeError("this SpeculativeGenerator is already generating: one engine serves one request at a "
                               "time (its drafter and cache state are per request); use one engine per concurrent "
                               "request")
        self._running = True
        try:
            return self._generate(input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id,
                                  streamer, generator)
        finally:
            self._running = False

    def _generate(self, input_ids, max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, streamer,
                  generator) -> GenerationResult:
        t_start = time.perf_counter()
        prompt = _prompt_array(input_ids)
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        warper = SamplingWarper(temperature, top_k, top_p) if do_sample else None
        eos = _eos_set(self.model, eos_token_id)
        n_prompt = len(prompt)
        stats = GenerationStats(prompt_tokens=n_prompt)

        if streamer is not None:
            streamer.put(torch.from_numpy(prompt)[None])
        if max_new_tokens == 0:
            if streamer is not None:
                streamer.end()
            return GenerationResult(torch.from_numpy(prompt)[None], [], stats)

        context = np.empty(n_prompt + max_new_tokens + 1, dtype=np.int64)
        context[:n_prompt] = prompt
        state = RequestState(context=context, length=n_prompt, cache=new_cache(), max_new_tokens=max_new_tokens,
                             eos=eos, warper=warper, generator=generator, streamer=streamer, stats=stats)
        t0 = time.perf_counter()
        prefill(self.model, prompt, state.cache, self.device)
        stats.prefill_ms = (time.perf_counter() - t0) * 1000
        self.drafter.begin(prompt)

        while not state.finished:
            self._step(state)
        if streamer is not None:
            streamer.end()
        stats.new_tokens = len(state.produced)
        stats.total_ms = (time.perf_counter() - t_start) * 1000
        sequences = torch.from_numpy(context[: state.length].copy())[None]
        return GenerationResult(sequences, state.produced, stats)


def _prompt_array(input_ids) -> np.ndarray:
    """``input_ids`` (int [1, P] or [P], tensor or array-like) as a fresh int64[P] numpy array."""
    prompt = torch.as_tensor(input_ids)
    if prompt.dim() == 2:
        if prompt.shape[0] != 1:
            raise ValueError(f"batch size {prompt.shape[0]} is not supported yet: pass one sequence ([1, P])")
        prompt = prompt[0]
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError("input_ids must hold at least one token (shape [1, P] or [P], P >= 1)")
    return prompt.to("cpu", torch.int64).numpy().copy()
