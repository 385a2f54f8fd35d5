"""Drafters: every source of guesses (``ngram``, ``sam``, ``rest``, ``dense``, ``recycle``, ``model_drafter``,
``self_spec``), the combinators that join several (``fusion``: ``a+b``; ``hybrid``: ``select:`` and ``hybrid:``) and
``spec.py``, which turns spec strings into drafters. Each implements ``draftless.engine.protocol.Drafter``."""
