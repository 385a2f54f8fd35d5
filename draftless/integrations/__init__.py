"""Adapters that run draftless's drafters inside other serving engines.

- ``chains``: engine-free per-request drafting for engines that verify one chain per request (not a tree);
  unit-testable without any serving engine installed;
- ``step_costs``: what one step of such an engine costs, and how many draft tokens a step is worth;
- ``vllm``: ``DraftlessProposer``, the thin glue vLLM loads as a ``custom_class`` speculative proposer.

Nothing here is imported by ``import draftless``, and importing (and running) the glue imports neither transformers
nor vLLM (``tests/test_vllm_proposer.py`` checks ``sys.modules`` in a fresh interpreter), so draftless installs into
vLLM's environment whatever transformers that pins.
"""
