"""Differences between the transformers versions draftless runs on, and the private attributes it reads.

Private attributes (``_attn_implementation``, ``_is_stateful``, ``_tied_weights_keys``, ``_name_or_path``) are read
here and nowhere else, through the small functions at the end, so a rename in transformers is one edit.

transformers 5.24 renamed the forward keyword that carries the KV cache from ``past_key_values`` to ``cache``; the
old name still works there with a ``FutureWarning`` and is removed in 5.40. Every call that hands a model a cache
spells it ``model(**{cache_keyword(model): cache}, ...)``.
"""
from __future__ import annotations

import inspect
import os
from functools import cache

# transformers (5.24 and later) reads this variable on every SDPA call (``integrations/sdpa_attention.py``): set to
# "1", a grouped-query model attends through SDPA's ``enable_gqa`` even when a mask is given, instead of copying every
# key and value head once per query head (``repeat_kv``). A tree pass always gives a mask, so without it each pass
# copies the whole cache three times over on SmolLM2 (9 query heads, 3 key/value heads): 2.5-5.6 ms of a 36-88 ms
# pass at 2-16 nodes after a 512-token cache. With a mask the output is the same bit for bit on CPU
# (tests/test_verify.py::test_grouped_query_sdpa_changes_no_bit); a one-token pass without a mask, which transformers
# otherwise folds into the key/value heads (``pack_gqa``), moves by float rounding (up to 2e-5 in the logits here),
# for ``model.generate`` and the engine alike.
GROUPED_QUERY_SDPA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"


def grouped_query_sdpa_forced() -> bool:
    """Whether this process's SDPA calls use ``enable_gqa`` with masks too (``GROUPED_QUERY_SDPA_ENV`` is "1")."""
    return os.environ.get(GROUPED_QUERY_SDPA_ENV, "0") == "1"


def prefer_grouped_query_sdpa() -> bool:
    """For a process draftless runs (the command line), not for a library user's: turn the grouped-query SDPA on
    (``GROUPED_QUERY_SDPA_ENV``) unless the environment already says otherwise, on CPU-only machines (on GPUs the
    SDPA kernel that serves ``enable_gqa`` with a mask differs, and was not measured). Returns whether it is on."""
    import torch

    if GROUPED_QUERY_SDPA_ENV not in os.environ and not torch.cuda.is_available():
        os.environ[GROUPED_QUERY_SDPA_ENV] = "1"
    return grouped_query_sdpa_forced()


@cache
def _keyword_of(forward_type: type) -> str:
    try:
        params = inspect.signature(forward_type.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(model) -> str:
    """``"cache"`` when ``model``'s forward takes the cache under that name (transformers >= 5.24), else
    ``"past_key_values"``. Read from the forward's signature (once per model class), so models whose remote code
    lags the library's rename keep working. A model object that is not an ``nn.Module`` with ``forward`` (a
    ``LayerSubsetModel`` view) is asked through its own ``cache_keyword`` attribute when it has one."""
    own = getattr(model, "cache_keyword", None)
    if isinstance(own, str):
        return own
    return _keyword_of(type(model))


def attn_implementation(model) -> str | None:
    """The attention implementation ``model`` runs (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``, ...): the
    config's private ``_attn_implementation``, None when unset."""
    return getattr(model.config, "_attn_implementation", None)


# How transformers 5.x names layers that keep a recurrent (state-space, linear-attention, convolution) state
# instead of, or besides, a key/value cache: 5.24 flagged such models with the private ``_is_stateful``; 5.25
# dropped it and reports them through ``config.layer_types`` ("linear_attention" for Mamba). Model types are the
# last resort for configs that report neither.
RECURRENT_LAYER_TYPES = ("linear_attention", "mamba", "recurrent", "conv", "short_conv", "rwkv", "ssm")
RECURRENT_MODEL_TYPES = ("mamba", "mamba2", "falcon_mamba", "rwkv", "recurrent_gemma", "jamba", "zamba", "zamba2",
                         "bamba", "falcon_h1", "granitemoehybrid", "lfm2", "xlstm", "nemotron_h", "qwen3_next")


def is_stateful(model) -> bool:
    """True for models that keep a recurrent state besides (or instead of) a KV cache, however the installed
    transformers says so: the private ``_is_stateful`` flag (<= 5.24), a recurrent kind among the text config's
    ``layer_types`` or ``layers_block_type`` (5.25), or a known recurrent ``model_type``."""
    if getattr(model, "_is_stateful", False):
        return True
    config = getattr(model, "config", None)
    if config is None:
        return False
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for attribute in ("layer_types", "layers_block_type"):
        kinds = getattr(text, attribute, None)
        if isinstance(kinds, (list, tuple)) and any(str(k) in RECURRENT_LAYER_TYPES for k in kinds):
            return True
    return getattr(text, "model_type", None) in RECURRENT_MODEL_TYPES


def tied_weight_keys(model) -> set[str]:
    """Parameter names that share storage with another parameter (``_tied_weights_keys``: a list or a dict in
    different versions; its keys either way)."""
    return set(getattr(model, "_tied_weights_keys", None) or [])


def model_path(model_or_config) -> str:
    """Where the model was loaded from (the config's private ``_name_or_path``), "" when unknown."""
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "_name_or_path", "") or "")
