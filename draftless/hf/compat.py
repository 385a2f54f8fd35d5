"""Differences between the transformers versions draftless runs on, and the private attributes it reads.

Private attributes (``_attn_implementation``, ``_is_stateful``, ``_tied_weights_keys``, ``_name_or_path``) are read
here and nowhere else, through the small functions at the end, so a rename in transformers is one edit.

transformers 5.24 renamed the forward keyword that carries the KV cache from ``past_key_values`` to ``cache``; the
old name still works there with a ``FutureWarning`` and is removed in 5.40. Every call that hands a model a cache
spells it ``model(**{cache_keyword(model): cache}, ...)``.
"""
from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
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


def set_attn_implementation(model, name: str) -> None:
    """Run ``model``'s attention on the registered implementation ``name`` from its next forward: the config's
    private ``_attn_implementation``, whose setter also sets it on the sub-configs. (``model.set_attn_implementation``
    says the same but walks every module and validates the name: too slow to do per pass.)"""
    model.config._attn_implementation = name


def is_stateful(model) -> bool:
    """True for models that keep a recurrent state besides a KV cache (transformers' private ``_is_stateful``)."""
    return bool(getattr(model, "_is_stateful", False))


def tied_weight_keys(model) -> set[str]:
    """Parameter names that share storage with another parameter (``_tied_weights_keys``: a list or a dict in
    different versions; its keys either way)."""
    return set(getattr(model, "_tied_weights_keys", None) or [])


def model_path(model_or_config) -> str:
    """Where the model was loaded from (the config's private ``_name_or_path``), "" when unknown."""
    config = getattr(model_or_config, "config", model_or_config)
    return str(getattr(config, "_name_or_path", "") or "")
