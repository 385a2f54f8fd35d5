"""A shallow view of a causal LM: its embedding, a subset of its decoder layers, its final norm and its head.

``LayerSubsetModel(model, keep)`` shares every module with ``model`` (no weights are copied and the model is not
modified) and runs the kept layers itself, in order. It is the draft model of self-speculation (the target with
layers skipped, as in Draft & Verify / SWIFT) and of "the first N layers" draft models.

The view is called like an HF causal LM with explicit ``position_ids``, a tree mask from
``attention.tree_attention_mask`` and its own ``DynamicCache``: attention modules write their keys/values at their
*original* ``layer_idx``, and a cache built without a config grows layers lazily, so skipped layers simply stay
empty (``kv_cache.keep_prefix_and`` passes over them). Per-layer attention type (Gemma 3's sliding/full layers)
picks the mask and the rotary embedding of each layer.

Supported: decoders shaped like Llama (``model.model.embed_tokens / layers / norm / rotary_emb`` and ``lm_head``),
which covers Llama, Qwen2/3, Mistral, Gemma 3 text and SmolLM2.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .attention import UnsupportedModel
from .compat import cache_keyword


@dataclass
class SubsetOutput:
    logits: torch.Tensor


def decoder_parts(model):
    """``(backbone, lm_head)`` of a Llama-shaped causal LM, or ``UnsupportedModel`` saying what is missing."""
    backbone = getattr(model, "model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if backbone is None or head is None or any(not hasattr(backbone, n) for n in needed):
        raise UnsupportedModel(
            f"{type(model).__name__} is not a Llama-shaped decoder (model.model.embed_tokens/layers/norm/rotary_emb "
            "and lm_head); layer-skipping drafts support Llama, Qwen2, Mistral, Gemma 3 and similar models"
        )
    return backbone, head


def num_layers(model) -> int:
    backbone, _ = decoder_parts(model)
    return len(backbone.layers)


class LayerSubsetModel:
    """``model`` restricted to the decoder layers ``keep`` (sorted, distinct indices into ``model.model.layers``).

    Not an ``nn.Module`` on purpose: it owns no parameters, so nothing can move or train them through it.
    """

    def __init__(self, model, keep: Sequence[int]):
        backbone, head = decoder_parts(model)
        n = len(backbone.layers)
        keep = sorted({int(i) for i in keep})
        if not keep:
            raise ValueError("a layer subset needs at least one layer")
        if keep[0] < 0 or keep[-1] >= n:
            raise ValueError(f"layer indices must lie in [0, {n}), got {keep}")
        self.target = model
        self.keep = tuple(keep)
        self.config = model.config
        self._backbone = backbone
        self._head = head
        text_config = model.config.get_text_config(decoder=True)
        self._layer_types = getattr(text_config, "layer_types", None)
        self._softcap = getattr(text_config, "final_logit_softcapping", None)
        params = inspect.signature(backbone.rotary_emb.forward).parameters
        self._rotary_per_type = "layer_type" in params
        self._is_stateful = False

    # what callers read off a model
    def parameters(self):
        return self.target.parameters()

    @property
    def device(self) -> torch.device:
        return next(self.target.parameters()).device

    def relative_cost(self) -> float:
        """Parameters touched per token (kept layers + head) over the full model's: a decode-cost estimate."""
        layer_params = [sum(p.numel() for p in layer.parameters()) for layer in self._backbone.layers]
        head = self._head.weight.numel()
        return (sum(layer_params[i] for i in self.keep) + head) / (sum(layer_params) + head)

    def __repr__(self) -> str:
        n = len(self._backbone.layers)
        return f"LayerSubsetModel({type(self.target).__name__}, keep {len(self.keep)}/{n}: {list(self.keep)})"

    # the view takes its cache as ``cache=`` (transformers >= 5.24's spelling); ``past_key_values=`` still works
    cache_keyword = "cache"

    def __call__(self, input_ids, position_ids, attention_mask, cache=None, use_cache=True,
                 logits_to_keep: int = 0, past_key_values=None, **_ignored) -> SubsetOutput:
        """``attention_mask``: an additive 4-D mask, or a dict of them keyed by layer type (as the engine builds)."""
        backbone = self._backbone
        hidden = backbone.embed_tokens(input_ids)
        rotary: dict = {}
        cache = (cache if cache is not None else past_key_values) if use_cache else None
        cache_arg = cache_keyword(backbone.layers[0]) if len(backbone.layers) else "cache"
        for i in self.keep:
            layer_type = self._layer_types[i] if self._layer_types is not None else None
            if layer_type not in rotary:
                if self._rotary_per_type:
                    rotary[layer_type] = backbone.rotary_emb(hidden, position_ids, layer_type)
                else:
                    rotary[layer_type] = backbone.rotary_emb(hidden, position_ids)
            mask = attention_mask[layer_type] if isinstance(attention_mask, dict) else attention_mask
            hidden = backbone.layers[i](
                hidden,
                attention_mask=mask,
                position_embeddings=rotary[layer_type],
                position_ids=position_ids,
                use_cache=use_cache,
                **{cache_arg: cache},
            )
            if isinstance(hidden, tuple):  # older decoder layers return (hidden, ...)
                hidden = hidden[0]
        if logits_to_keep:
            hidden = hidden[:, -int(logits_to_keep):]
        logits = self._head(backbone.norm(hidden))
        if self._softcap is not None:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return SubsetOutput(logits=logits)
