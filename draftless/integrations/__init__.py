"""Adapters that run draftless's drafters inside other serving engines.

- ``chains``: engine-free per-request drafting for engines that verify one chain per request (not a tree);
  unit-testable without any serving engine installed;
- ``vllm``: ``DraftlessProposer``, the thin glue vLLM loads as a ``custom_class`` speculative proposer.

Nothing here is imported by ``import draftless``: importing draftless never imports vLLM.
"""
