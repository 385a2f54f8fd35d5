"""draftless: training-free, lossless speculative decoding for Hugging Face causal LMs.

    import draftless
    out = model.generate(**inputs, max_new_tokens=128, custom_generate=draftless.custom_generate, drafter="auto")

or, holding the engine yourself (same arguments as ``model.generate``, plus per-run stats):

    fast = draftless.accelerate(model, drafter="auto", tokenizer=tokenizer)
    out = fast.generate(**inputs, max_new_tokens=128)
    out.sequences, out.stats.mean_accepted

The public names below are imported from their modules on first use (``_EXPORTS``), so ``import draftless``, and
the import of any submodule, which runs this file first, stays light: the glue that runs draftless's drafters
inside vLLM (``draftless.integrations``) imports neither transformers nor vLLM.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "accelerate": ".api", "generate": ".api",
    "custom_generate": ".dropin", "CustomGenerate": ".dropin",
    "GenerationResult": ".engine.generator", "SpeculativeGenerator": ".engine.generator",
    "BaseDrafter": ".engine.protocol", "Drafter": ".engine.protocol", "NullDrafter": ".engine.protocol",
    "StepFeedback": ".engine.protocol",
    "DraftTree": ".engine.tree", "merge": ".engine.tree",
    "UnsupportedGenerationOption": ".hf.generation",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
    from .api import accelerate, generate
    from .dropin import CustomGenerate, custom_generate
    from .engine.generator import GenerationResult, SpeculativeGenerator
    from .engine.protocol import BaseDrafter, Drafter, NullDrafter, StepFeedback
    from .engine.tree import DraftTree, merge
    from .hf.generation import UnsupportedGenerationOption


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "accelerate", "generate", "DraftTree", "merge", "Drafter", "BaseDrafter", "NullDrafter", "StepFeedback",
    "SpeculativeGenerator", "GenerationResult", "custom_generate", "CustomGenerate", "UnsupportedGenerationOption",
]
