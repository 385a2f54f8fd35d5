"""Drafters: every source of guesses (``ngram``, ``sam``, ``rest``, ``dense``, ``recycle``, ``lookahead``,
``history``, ``model_drafter``, ``self_spec``, ``grammar``: what a request's grammar forces, and the guard that
keeps ``auto`` to it), the policy by which ``sam`` and ``history`` turn suffix-automaton
matches into trees (``suffix_policy``), the combinators that join several (``fusion``: ``a+b``; ``hybrid``:
``select:`` and ``hybrid:``) and ``spec``, which turns spec strings into drafters. Each implements
``draftless.engine.protocol.Drafter``."""
