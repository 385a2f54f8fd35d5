"""The speculative loop and its pure parts.

- the loop: ``generator`` (``SpeculativeGenerator``: the engine, and the one-row loop), ``batch`` (the batched
  loop: the rows of a batch in one pass per step) and ``step`` (the stages of a row's step both loops go through:
  draft, accept and commit, learn), ``prefill`` (the prompt into a fresh cache, one row or a batch, in chunks where
  sliding windows make that cheaper);
- its parts: ``tree`` (draft trees), ``protocol`` (the drafter protocol), ``accept`` (acceptance), ``processing``
  (logits processors and stopping criteria on trees), ``calibration``, ``budget`` (tree sizes), ``cost_curve``
  (t(n), measured), ``observed_costs`` (t(n) as the engine's passes found it), ``shared_state`` (what sibling
  engines share) and ``stats``.

Only ``generator``, ``batch``, ``prefill`` and ``cost_curve`` run the model, through ``draftless.hf``."""
