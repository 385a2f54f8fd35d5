"""The one import of llguidance (an optional dependency: ``pip install draftless[grammar]``)."""
from __future__ import annotations


def llguidance():
    """The ``llguidance`` module (with its Hugging Face tokenizer bridge loaded); a clear ``ImportError`` naming
    the extra when it is not installed."""
    try:
        import llguidance
        import llguidance.hf  # noqa: F401 (a submodule, loaded for GrammarCompiler)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("grammars need llguidance: pip install 'draftless[grammar]' (or llguidance)") from err
    return llguidance
