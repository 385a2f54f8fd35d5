r"""Grammars (JSON schemas, regular expressions, Lark) over a model's vocabulary: ``compiler`` (a vocabulary's
``GrammarCompiler`` and its ``Grammar``\ s), ``matcher`` (where a token sequence stands in a grammar: the tokens
admitted next, the tokens forced), ``processor`` (the logits processor that enforces a grammar, for
``model.generate`` and draftless alike), ``xgrammar_bridge`` (xgrammar's own transformers processor: refused on
batches, its grammar read for drafting) and ``llg`` (the one module that imports llguidance,
``pip install draftless[grammar]``, on first use)."""
from .compiler import Grammar, GrammarCompiler
from .matcher import Matcher
from .processor import GrammarLogitsProcessor, find_grammar

__all__ = ["Grammar", "GrammarCompiler", "GrammarLogitsProcessor", "Matcher", "find_grammar"]
