"""The one registry of datastore kinds: ``BUILDERS[kind]`` builds a store of that kind from corpus tokens.

A ``StoreBuilder``'s ``build`` receives the int32 corpus tokens and writes the store with
``draftless.stores.datastore.write_store`` (directly or through ``indexes.save_index``)::

    build(tokens, out_dir, identity, build_args, extra_meta, vocab_size=..., **opts) -> dict of statistics

and its optional ``warmup()`` runs before the clock starts (loading compiled numba kernels is not build time).
To add a kind: an index structure in ``draftless/index/`` with ``kind``, ``to_arrays`` and ``from_arrays`` (saved
and loaded by ``indexes.py``), a builder here, a drafter in ``draftless/drafters/`` (see ARCHITECTURE.md).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..index.suffix_array import SuffixArray
from ..index.suffix_automaton import SuffixAutomaton
from .dense_build import build_dense, warm_dense
from .indexes import save_index


@dataclass(frozen=True)
class StoreBuilder:
    """How to build one store kind: ``build`` (signature above) and an optional kernel ``warmup``."""

    build: Callable[..., dict]
    warmup: Callable[[], None] | None = None


def build_sam(tokens: np.ndarray, out_dir: Path, identity: Mapping, build_args: Mapping, extra_meta: Mapping,
              vocab_size: int | None = None) -> dict:
    """Suffix-automaton store: batch construction, count propagation, CSR freeze, write."""
    t0 = time.perf_counter()
    sam = SuffixAutomaton.build(tokens, copy=False).freeze(vocab_size)
    t1 = time.perf_counter()
    save_index(sam, out_dir, identity, build_args, extra_meta)
    t2 = time.perf_counter()
    return {"n_states": sam.n_states, "n_edges": sam.n_transitions, "construct_s": t1 - t0, "write_s": t2 - t1}


def warm_sam() -> None:
    """Load (or compile) every kernel a build uses, on a few tokens."""
    SuffixAutomaton.build(np.array([1, 2, 1, 2, 3, 40], dtype=np.int32), copy=False).freeze()


def build_rest(tokens: np.ndarray, out_dir: Path, identity: Mapping, build_args: Mapping, extra_meta: Mapping,
               vocab_size: int | None = None, progress: bool = True, sa_method: str | None = None) -> dict:
    """``draftless.stores.build`` builder for kind ``"rest"``: a separator-first suffix array (``sa_method``:
    ``"divsufsort"`` or ``"doubling"``, default the first when installed), then write."""
    t0 = time.perf_counter()
    sa = SuffixArray.build(tokens, progress=progress, method=sa_method, separator=extra_meta.get("separator_id"))
    t1 = time.perf_counter()
    save_index(sa, out_dir, identity, build_args, extra_meta)
    t2 = time.perf_counter()
    return {"construct_s": t1 - t0, "write_s": t2 - t1}


def warm_rest() -> None:
    """Compile/load the lookup kernels on a few tokens (kept out of build timings)."""
    sa = SuffixArray.build(np.array([1, 2, 1, 2, 3, 40], dtype=np.int32), separator=3)
    sa.find([1, 2])
    sa.longest_suffix_match(np.array([5, 1, 2], dtype=np.int64))
    sa.continuation_counts([1], 3)


BUILDERS: dict[str, StoreBuilder] = {
    "sam": StoreBuilder(build_sam, warm_sam),
    "rest": StoreBuilder(build_rest, warm_rest),
    "dense": StoreBuilder(build_dense, warm_dense),
}

STORE_KINDS: tuple[str, ...] = tuple(BUILDERS)
