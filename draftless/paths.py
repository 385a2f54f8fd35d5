"""Where draftless keeps files between runs: one policy, two roots.

- ``cache_root()``: artefacts that are expensive to make and identical for everyone who makes them: GGUF models
  converted to HF folders (``models/``) and assembled GGUF files (``gguf/``). ``$DRAFTLESS_CACHE``, else
  ``~/.cache/draftless``.
- ``state_dir()``: what this machine measured or learned and reuses across processes: verification cost curves
  (``cost_curves/``) and self-speculation layer choices (``self_spec/``). ``$DRAFTLESS_STATE_DIR``, else the cache
  root. Kept apart so a test run (or a benchmark) can start from a clean state while still reading the converted
  models from the shared cache.

Shipped with the package, read-only: ``bench_data_dir()``, the public prompt sets and corpora the benchmarks, the
stream workloads and the datastore recipes read (``draftless/data/bench``, sources and licences in its
``SOURCES.md``).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Directory for converted models (``$DRAFTLESS_CACHE`` or ``~/.cache/draftless``)."""
    root = os.environ.get("DRAFTLESS_CACHE") or os.path.join(Path.home(), ".cache", "draftless")
    return Path(root)


def state_dir() -> Path:
    """Directory for measured cost curves and learned choices (``$DRAFTLESS_STATE_DIR`` or ``cache_root()``)."""
    root = os.environ.get("DRAFTLESS_STATE_DIR")
    return Path(root) if root else cache_root()


def safe_filename(key: str) -> str:
    """``key`` with every character outside ``[A-Za-z0-9-_.]`` replaced by ``_`` (a model name, a device...)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def bench_data_dir() -> Path:
    """The shipped benchmark data: ``spec_bench_dev.jsonl``, ``gsm8k_train.jsonl``, ``mbpp_train.jsonl``,
    ``self_instruct_seed_tasks.jsonl`` (see ``SOURCES.md`` there for origins and licences)."""
    return Path(__file__).resolve().parent / "data" / "bench"
