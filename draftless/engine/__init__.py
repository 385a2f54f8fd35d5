"""The speculative loop and its pure parts: draft trees, acceptance, calibration, tree budgets, the cost curve,
statistics and the drafter protocol. Only ``generator.py`` and ``cost_curve.py`` run the model, through
``draftless.hf``."""
