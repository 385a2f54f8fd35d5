"""Copying weights into a freshly built model: the one step GGUF conversion and derived draft models share."""
from __future__ import annotations

import copy

import torch

from .compat import tied_weight_keys


def fresh_model_with_weights(config, state_dict: dict, generation_config, dtype: torch.dtype, what: str):
    """A new ``AutoModelForCausalLM`` built from ``config`` (its ``quantization_config`` removed) holding the
    tensors of ``state_dict``, with a copy of ``generation_config``.

    Raises ``RuntimeError`` naming ``what`` when a weight of the new model is left unset (tied weights excepted) or
    ``state_dict`` holds one the model has no place for: a silent partial copy would be a different model.
    """
    from transformers import AutoModelForCausalLM

    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(state_dict, strict=False)
    tied = tied_weight_keys(fresh)
    if unexpected or [k for k in missing if k not in tied]:
        raise RuntimeError(f"{what} lost weights: missing={missing} unexpected={unexpected}")
    fresh.generation_config = copy.deepcopy(generation_config)
    return fresh
