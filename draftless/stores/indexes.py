"""Index structures on disk: each ``draftless.index`` structure as a datastore of its kind.

The structures know arrays only (``to_arrays() -> (arrays, meta)``, ``from_arrays(arrays, meta)``, their ``kind``
and ``FORMAT_ARRAYS``); the files are this package's: ``save_index`` writes a structure's arrays as a datastore
(``datastore.write_store``: atomic, checksummed) and ``load_index`` opens one (``datastore.open_store``: kind,
tokenizer and file checks) and maps it back::

    save_index(SuffixAutomaton.build(tokens), "stores/mine", tokenizer_identity(tok))
    sam = load_index(SuffixAutomaton, "stores/mine", tokenizer_identity=tokenizer_identity(tok))
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .datastore import RESERVED_META, DatastoreError, open_store, write_store


def save_index(index, path: str | os.PathLike, tokenizer_identity: Mapping | None = None,
               build_args: Mapping | None = None, extra_meta: Mapping | None = None, **options) -> Path:
    """Write ``index`` (a ``SuffixAutomaton``, ``SuffixArray`` or ``DenseStore``) as a datastore of its kind at
    ``path``. ``tokenizer_identity``: the vocabulary its tokens come from (``draftless.tokenizer_identity``);
    ``build_args`` / ``extra_meta``: recorded in ``meta.json`` (``extra_meta`` over the index's own keys);
    ``options`` go to its ``to_arrays`` (a growable automaton's ``vocab_size``). Returns ``path``."""
    arrays, meta = index.to_arrays(**options)
    meta = {key: value for key, value in meta.items() if key not in RESERVED_META}  # a loaded store's own meta
    meta.update(extra_meta or {})
    return write_store(path, index.kind, arrays, tokenizer_identity, build_args, meta,
                       n_tokens=len(arrays["tokens"]))


def load_index(cls, path: str | os.PathLike, tokenizer_identity: Mapping | None = None, verify: str = "size",
               mmap: bool = True, **options):
    """Open the datastore at ``path`` as a ``cls`` (``SuffixAutomaton``, ``SuffixArray``, ``DenseStore``): its arrays
    memory-mapped unless ``mmap=False``, the store's ``meta.json`` as the structure's ``store_meta``.

    ``tokenizer_identity`` refuses a store built with another tokenizer; ``verify="full"`` also checks sha256
    checksums; ``options`` go to ``cls.from_arrays`` (a dense store's ``ef_search`` / ``nprobe``). Raises
    ``DatastoreError`` naming the problem when the store is missing, corrupt, of another kind, foreign or
    inconsistent."""
    store = open_store(path, expected_kind=cls.kind, tokenizer_identity=tokenizer_identity, verify=verify, mmap=mmap)
    try:
        return cls.from_arrays(store.arrays, store.meta, **options)
    except ValueError as exc:
        raise DatastoreError(f"{path}: {exc}") from exc
