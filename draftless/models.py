"""``from draftless.models import load_model``: the documented entry point for loading a target model.

The implementation lives in ``draftless.hf.loading`` (with everything else that touches transformers); this module
only re-exports its public names so the README's imports keep working.
"""
from __future__ import annotations

from .hf.loading import (
                         DEFAULT_MODEL,
                         SHIPPED_MODELS,
                         ModelNotAvailable,
                         ShippedModel,
                         load_model,
                         load_tokenizer,
                         resolve_model_path,
)
from .paths import cache_root

__all__ = ["DEFAULT_MODEL", "SHIPPED_MODELS", "ModelNotAvailable", "ShippedModel", "load_model", "load_tokenizer",
           "resolve_model_path", "cache_root"]
