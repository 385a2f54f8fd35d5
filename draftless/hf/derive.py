"""Training-free draft models derived from a target: its first ``n`` decoder layers plus its own norm and head.

``derive_shallow_model(model, n_layers)`` returns a new, standalone causal LM of the same architecture with
``num_hidden_layers = n_layers`` whose weights are copies of the target's embedding, first ``n_layers`` layers, final
norm and head. It shares the target's tokenizer by construction, so it is a valid ``model:PATH`` drafter once saved
(``save_shallow_model``). Nothing is trained: how well it drafts is what the target's early layers already know
(measured in docs/benchmarks.md, "Model drafters").
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from ..atomic import atomic_directory
from .layer_view import num_layers
from .weights import fresh_model_with_weights


def derive_shallow_model(model, n_layers: int):
    """A copy of ``model`` truncated to its first ``n_layers`` decoder layers (float weights, same dtype)."""
    total = num_layers(model)
    if not 1 <= n_layers < total:
        raise ValueError(f"n_layers must be in 1..{total - 1} for a {total}-layer model, not {n_layers}")
    config = copy.deepcopy(model.config)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    text_config.num_hidden_layers = n_layers
    if getattr(text_config, "layer_types", None) is not None:  # Gemma 3: keep each kept layer's attention type
        text_config.layer_types = list(text_config.layer_types)[:n_layers]
    state = {k: v for k, v in model.state_dict().items() if _layer_index(k) is None or _layer_index(k) < n_layers}
    shallow = fresh_model_with_weights(config, state, model.generation_config, next(model.parameters()).dtype,
                                       "deriving the draft model")
    return shallow.eval()


def _layer_index(key: str) -> int | None:
    """``model.layers.7.mlp.up_proj.weight`` -> 7; None for weights outside the decoder layers."""
    parts = key.split(".")
    for a, b in zip(parts, parts[1:]):
        if a == "layers" and b.isdigit():
            return int(b)
    return None


def save_shallow_model(model, tokenizer, n_layers: int, out_dir: str | os.PathLike) -> Path:
    """Derive and save (atomically: temp folder + rename) an HF folder with the tokenizer; returns ``out_dir``."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    with atomic_directory(out) as tmp, torch.no_grad():
        derive_shallow_model(model, n_layers).save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out
