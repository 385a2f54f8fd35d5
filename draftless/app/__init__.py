"""The application layer: the ``draftless`` command line (``cli.py``), benchmarks (``bench.py``) and prompt files
(``prompts.py``)."""
