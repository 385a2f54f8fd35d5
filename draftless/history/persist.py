"""A history on disk: generations of a datastore directory behind an atomically replaced pointer file.

Layout of a history directory ``DIR``::

    DIR/CURRENT        one line: the name of the complete generation to read, e.g. ``gen-00000042``
    DIR/gen-00000042/  a datastore (``draftless.stores.datastore``) of kind ``"history"``:
        tokens.npy          int32[T]   every kept request's context, segment after segment, request after request
        request_bounds.npy  int64[R+1] offsets of the requests in ``tokens`` (and the end)
        request_segment.npy int32[R]   index of each request's segment in the two arrays below
        segment_seq.npy     int64[S]   the segments' creation numbers (recency)
        segment_space.npy   int32[S]   index of each segment's namespace in meta.json's ``namespaces``
        meta.json           ... + {"history_version": 1, "namespaces": [str | null, ...]}

A save writes a new generation (itself built in a temporary sibling and renamed into place by ``write_store``),
then replaces ``CURRENT`` (``atomic_file``: write a temporary file, rename it), and only then deletes older
generations. A process killed at any point leaves ``CURRENT`` naming a complete generation: the previous one, or
the new one once the pointer is in. Leftovers of a killed save (a temporary directory, an unreferenced generation)
are removed by the next save. One process writes a history directory at a time.

Only the tokens are stored; a load replays them request by request into fresh automata, which rebuilds exactly
the structure (and the sizes) the saving process had.
"""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..stores.datastore import DatastoreError, open_store, write_store
from .segment import Segment

KIND = "history"
HISTORY_VERSION = 1
POINTER = "CURRENT"
_GENERATION = re.compile(r"gen-(\d{8})")


class HistoryError(DatastoreError):
    """A history directory is not one, is corrupt, has a newer format or was written with another tokenizer."""


def _current(path: Path) -> str | None:
    """The generation ``CURRENT`` names; None for a missing or empty directory (a new history)."""
    if not path.exists():
        return None
    if not path.is_dir():
        raise HistoryError(f"history {path} is not a directory")
    pointer = path / POINTER
    if not pointer.is_file():
        if any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise HistoryError(f"{path} is not a draftless history ({POINTER} is missing) and is not empty; "
                               f"refusing to read or overwrite it")
        return None
    name = pointer.read_text().strip()
    if not _GENERATION.fullmatch(name):
        raise HistoryError(f"{pointer} is corrupt: it names {name[:40]!r}, not a generation")
    return name


def save_history(path: str | os.PathLike, segments: list[tuple[str | None, Segment]], tokenizer_identity: dict) -> None:
    """Write ``segments`` (``(namespace, segment)`` pairs, oldest first) as the next generation of ``path``."""
    path = Path(path)
    current = _current(path)
    number = int(_GENERATION.fullmatch(current).group(1)) + 1 if current else 0
    names: list[str | None] = []
    tokens, bounds, req_segment, seg_seq, seg_space = [], [0], [], [], []
    for i, (namespace, seg) in enumerate(segments):
        if namespace not in names:
            names.append(namespace)
        seg_seq.append(seg.seq)
        seg_space.append(names.index(namespace))
        for context in seg.requests():
            tokens.append(context)
            bounds.append(bounds[-1] + len(context))
            req_segment.append(i)
    arrays = {
        "tokens": np.concatenate(tokens).astype(np.int32) if tokens else np.zeros(0, dtype=np.int32),
        "request_bounds": np.asarray(bounds, dtype=np.int64),
        "request_segment": np.asarray(req_segment, dtype=np.int32),
        "segment_seq": np.asarray(seg_seq, dtype=np.int64),
        "segment_space": np.asarray(seg_space, dtype=np.int32),
    }
    generation = f"gen-{number:08d}"
    path.mkdir(parents=True, exist_ok=True)
    write_store(path / generation, KIND, arrays, tokenizer_identity,
                extra_meta={"history_version": HISTORY_VERSION, "namespaces": names})
    with atomic_file(path / POINTER) as fh:
        fh.write(generation + "\n")
    for entry in path.iterdir():  # older generations and a killed save's temporary directories
        if entry.name != generation and entry.name != POINTER and entry.is_dir() and (
                _GENERATION.fullmatch(entry.name) or entry.name.startswith(".gen-")):
            shutil.rmtree(entry, ignore_errors=True)


def load_history(path: str | os.PathLike, tokenizer_identity: dict
                 ) -> Iterator[tuple[int, str | None, list[np.ndarray]]]:
    """Yield ``(segment seq, namespace, [context int32[L], ...])`` per saved segment, oldest first; nothing for a
    history not saved yet. Every check runs before the first yield."""
    path = Path(path)
    current = _current(path)
    if current is None:
        return iter(())
    try:
        store = open_store(path / current, expected_kind=KIND, tokenizer_identity=tokenizer_identity, verify="full",
                           mmap=False)
    except HistoryError:
        raise
    except DatastoreError as exc:
        raise HistoryError(f"history {path} cannot be used: {exc}") from exc
    meta, a = store.meta, store.arrays
    if meta.get("history_version") != HISTORY_VERSION:
        raise HistoryError(f"history {path} has format version {meta.get('history_version')}, this draftless reads "
                           f"version {HISTORY_VERSION}; delete it or point history= elsewhere")
    names = meta.get("namespaces")
    bounds, req_segment = a.get("request_bounds"), a.get("request_segment")
    seg_seq, seg_space, tokens = a.get("segment_seq"), a.get("segment_space"), a.get("tokens")
    ok = (isinstance(names, list) and all(n is None or isinstance(n, str) for n in names)
          and all(x is not None for x in (bounds, req_segment, seg_seq, seg_space, tokens))
          and bounds.ndim == 1 and len(bounds) == len(req_segment) + 1 and bounds[0] == 0
          and bounds[-1] == len(tokens) and bool(np.all(np.diff(bounds) > 0))
          and len(seg_seq) == len(seg_space)
          and bool(np.all((req_segment >= 0) & (req_segment < len(seg_seq))))
          and bool(np.all(np.diff(req_segment) >= 0))
          and bool(np.all((seg_space >= 0) & (seg_space < len(names or []))))
          and bool(np.all(np.diff(seg_seq) > 0))
          and (tokens.size == 0 or (int(tokens.min()) >= 0 and int(tokens.max()) < np.iinfo(np.int32).max - 1)))
    if not ok:
        raise HistoryError(f"history {path / current} is corrupt: its arrays do not describe requests in segments")
    per_segment: list[list[np.ndarray]] = [[] for _ in seg_seq]
    for r in range(len(req_segment)):
        per_segment[int(req_segment[r])].append(tokens[bounds[r]: bounds[r + 1]])
    return iter([(int(seg_seq[i]), names[int(seg_space[i])], reqs) for i, reqs in enumerate(per_segment) if reqs])
