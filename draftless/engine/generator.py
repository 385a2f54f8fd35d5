"""The speculative loop: draft -> verify -> accept -> compact -> feedback.

Invariant between steps: the KV cache holds every committed token but the last; the last committed token is the
root of the next draft tree, so each verification pass also computes the root's own logits and no pass is spent
on the bonus token alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .accept import SamplingWarper, accept_greedy, accept_sampling
from ..hf.attention import AttentionLayout, inspect_model, tree_attention_mask
from .budget import best_tree_size
from .cost_curve import CostCurve, cost_curve_for
from .calibration import Calibrator
from .protocol import Drafter, StepFeedback
from ..hf.kv_cache import keep_prefix_and, new_cache
from .stats import GenerationStats
from .tree import DraftTree


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


class SpeculativeGenerator:
    """A model paired with a drafter. Build it with ``draftless.accelerate``.

    ``max_nodes``: the most tree nodes (root included) one pass may verify. ``adaptive``: choose each step's tree
    size from the measured cost curve and calibrated scores (see ``budget.py``); when False every step verifies up
    to ``max_nodes`` nodes. ``cost_curve``: pass one to skip measuring. ``min_gain``: verify a tree only when its
    expected speed beats plain decoding by this factor (a margin for misestimated scores).
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
        # A drafter that calibrates its own sources (a fusion) only needs a neutral residual correction here.
        if not isinstance(drafter, Drafter):
            raise TypeError(f"{type(drafter).__name__} does not implement the Drafter protocol (name, begin, draft, "
                            "feedback, wants_hidden_states, calibrates_scores; BaseDrafter provides the defaults)")
        self_calibrated = bool(drafter.calibrates_scores)
        self.calibrator = (Calibrator(prior_ratio=1.0) if self_calibrated else Calibrator()) if calibrate else None
        self._draft_ms = 0.0  # running estimate of one draft call, charged to every non-empty tree
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @property
    def cost_curve(self) -> CostCurve:
        if self._cost_curve is None:
            self._cost_curve = cost_curve_for(self.model, self.layout, verbose=self.verbose)
        return self._cost_curve

    # ------------------------------------------------------------------ one verification pass
    def _verify(self, cache, tree: DraftTree, prefix_len: int, want_hidden: bool):
        """Run the tree through the model. Returns logits float[n, V] and, if asked, hidden states float[n, H]."""
        depths = tree.depths
        ids = torch.from_numpy(tree.tokens).to(self.device)[None]
        positions = torch.from_numpy(depths.astype(np.int64) + prefix_len).to(self.device)[None]
        mask = tree_attention_mask(self.layout, tree.ancestor_mask(), depths, prefix_len, self.dtype, self.device)
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            output_hidden_states=want_hidden,
        )
        hidden = out.hidden_states[-1][0] if want_hidden else None
        return out.logits[0], hidden

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
            size = best_tree_size(tree.subset(keep), self.cost_curve, draft_ms=self._draft_ms,
                                  max_nodes=self.max_nodes, min_gain=self.min_gain)
            keep = tree.prune_indices(size, max_depth=remaining - 1)
        if len(keep) < len(tree):
            tree = tree.subset(keep)
        return tree, observation

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
        t_start = time.perf_counter()
        prompt = torch.as_tensor(input_ids)
        if prompt.dim() == 2:
            if prompt.shape[0] != 1:
                raise ValueError(f"batch size {prompt.shape[0]} is not supported yet: pass one sequence ([1, P])")
            prompt = prompt[0]
        if prompt.dim() != 1 or prompt.numel() == 0:
            raise ValueError("input_ids must hold at least one token (shape [1, P] or [P], P >= 1)")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        warper = SamplingWarper(temperature, top_k, top_p) if do_sample else None
        eos = _eos_set(self.model, eos_token_id)
        prompt_np = prompt.to("cpu", torch.int64).numpy().copy()
        n_prompt = len(prompt_np)
        stats = GenerationStats(prompt_tokens=n_prompt)

        if streamer is not None:
            streamer.put(torch.from_numpy(prompt_np)[None])
        if max_new_tokens == 0:
            if streamer is not None:
                streamer.end()
            return GenerationResult(torch.from_numpy(prompt_np)[None], [], stats)

        context = np.empty(n_prompt + max_new_tokens + 1, dtype=np.int64)
        context[:n_prompt] = prompt_np
        length = n_prompt
        cache = new_cache()
        t0 = time.perf_counter()
        if n_prompt > 1:
            prefix = torch.from_numpy(prompt_np[:-1]).to(self.device)[None]
            self.model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
        stats.prefill_ms = (time.perf_counter() - t0) * 1000
        self.drafter.begin(prompt_np)
        want_hidden = bool(self.drafter.wants_hidden_states)

        produced: list[int] = []
        finished = False
        while not finished:
            remaining = max_new_tokens - len(produced)
            prefix_len = length - 1
            t0 = time.perf_counter()
            view = context[:length]
            view.flags.writeable = False
            tree, observation = self._prepare_tree(self.drafter.draft(view, self.max_nodes), int(context[length - 1]),
                                                   remaining)
            view.flags.writeable = True
            t1 = time.perf_counter()
            logits, hidden = self._verify(cache, tree, prefix_len, want_hidden)
            t2 = time.perf_counter()
            if warper is None:
                acc = accept_greedy(tree, logits)
            else:
                acc = accept_sampling(tree, logits, warper, generator)
            committed = [int(t) for t in tree.tokens[acc.accepted[1:]]] + [acc.bonus]
            committed = committed[:remaining]
            for i, tok in enumerate(committed):
                if tok in eos:
                    committed = committed[: i + 1]
                    finished = True
                    break
            if len(produced) + len(committed) >= max_new_tokens:
                finished = True
            keep_prefix_and(cache, prefix_len, torch.from_numpy(acc.accepted).to(self.device))
            context[length : length + len(committed)] = committed
            length += len(committed)
            produced.extend(committed)
            t3 = time.perf_counter()

            self._draft_ms = 0.9 * self._draft_ms + 0.1 * (t1 - t0) * 1000
            stats.steps += 1
            stats.draft_ms += (t1 - t0) * 1000
            stats.verify_ms += (t2 - t1) * 1000
            stats.accept_ms += (t3 - t2) * 1000
            stats.record_tree(tree, acc.accepted)
            if observation is not None:
                self.calibrator.observe(*observation, committed)
            if streamer is not None:
                streamer.put(torch.tensor(committed, dtype=torch.long))
            if not finished:
                t4 = time.perf_counter()
                self.drafter.feedback(
                    StepFeedback(
                        tree=tree,
                        accepted=acc.accepted,
                        new_tokens=np.asarray(committed, dtype=np.int64),
                        context=context[:length],
                        logits=logits,
                        hidden=hidden,
                    )
                )
                stats.feedback_ms += (time.perf_counter() - t4) * 1000
        if streamer is not None:
            streamer.end()
        stats.new_tokens = len(produced)
        stats.total_ms = (time.perf_counter() - t_start) * 1000
        sequences = torch.from_numpy(context[:length].copy())[None]
        return GenerationResult(sequences, produced, stats)
