"""Differences between the transformers versions draftless runs on.

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
