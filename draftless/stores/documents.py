"""Reading corpus files into documents: the ``Piece`` stream that a datastore build tokenizes (``corpus.py``) and
that decontamination filters (``decontaminate.py``).

A corpus is a list of paths; each path is one of

- a ``.jsonl`` file: one document per record, the chosen ``fields`` joined by a newline (``--field question
  --field answer``); without ``fields`` the record's ``"text"`` field is used;
- a ``.parquet`` file: one document per row, its ``fields`` columns (default ``"text"``) joined alike (needs
  ``pyarrow``, which the ``ray`` extra brings);
- a directory: every file matching ``glob`` below it (recursively, sorted), one document per file;
- any other file: plain text, one document (large files are read in line-aligned pieces, see ``PIECE_CHARS``);
- a pattern (``data/*.jsonl``, ``src/**/*.py``) that names no file itself: the files it matches, sorted.

``corpus_files`` lists the files a corpus reads, in order, and ``read_file`` reads one of them (a jsonl file also a
byte range of it, a parquet file some of its row groups): the units a parallel build (``ray_build``) hands out.
"""
from __future__ import annotations

import fnmatch
import glob as _glob
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Plain-text files larger than this are tokenized in pieces cut at line ends, so a multi-GB file never becomes one
# Python string; pieces of one file are joined without a separator.
PIECE_CHARS = 1 << 22


@dataclass(frozen=True)
class Piece:
    """A piece of text. ``starts_document`` is False for the later pieces of one large plain-text file."""

    text: str
    starts_document: bool
    n_bytes: int  # bytes of input consumed, for the progress bar


def _excluded(path: Path, root: Path, exclude: Sequence[str]) -> bool:
    rel = path.relative_to(root)
    return any(fnmatch.fnmatch(part, pattern) for pattern in exclude for part in rel.parts)


def list_files(directory: Path, glob: str | None = None, exclude: Sequence[str] = ()) -> list[Path]:
    """Files below ``directory`` matching ``glob`` (default: all), sorted for a reproducible token order.

    ``exclude``: fnmatch patterns; a file is skipped when any component of its path relative to ``directory``
    matches one (e.g. ``"site-packages"``, ``"test*"``).
    """
    files = [p for p in directory.rglob(glob or "*") if p.is_file() and not _excluded(p, directory, exclude)]
    return sorted(files)


def _jsonl_text(record: dict, fields: Sequence[str] | None, where: str) -> str:
    names = list(fields) if fields else ["text"]
    parts = []
    for name in names:
        if name not in record:
            raise ValueError(f"{where}: record has no field {name!r} (fields: {sorted(record)}); choose with --field")
        value = record[name]
        if isinstance(value, list):  # e.g. Spec-Bench "turns"
            parts.extend(str(v) for v in value)
        else:
            parts.append(str(value))
    return "\n".join(parts)


def read_jsonl(path: Path, fields: Sequence[str] | None) -> Iterator[Piece]:
    """One ``Piece`` per record of a jsonl file: its ``fields`` joined by a newline (default: ``"text"``)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object per line, got {type(record).__name__}")
            yield Piece(_jsonl_text(record, fields, f"{path}:{line_no}"), True, len(raw))


def _read_text(path: Path, piece_chars: int) -> Iterator[Piece]:
    first = True
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        while True:
            text = f.read(piece_chars)
            if not text:
                break
            # Cut after a line end, never inside a word: tokens match whole-file tokenization except possibly the
            # whitespace at the cut.
            if len(text) == piece_chars:
                text += f.readline()
            yield Piece(text, first, len(text.encode("utf-8", errors="replace")))
            first = False
    if first:  # an empty file is still a (empty) document
        yield Piece("", True, 0)


def read_jsonl_range(path: Path, fields: Sequence[str] | None, start: int, end: int) -> Iterator[Piece]:
    """The records of a jsonl file whose lines start in the byte range ``[start, end)`` (``start`` at a line start):
    a file cut at line starts reads as the whole file, range after range."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            pos += len(raw)
            if raw.strip():
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError(f"{path}@{pos - len(raw)}: expected a JSON object per line, got "
                                     f"{type(record).__name__}")
                yield Piece(_jsonl_text(record, fields, f"{path}@{pos - len(raw)}"), True, len(raw))


def read_parquet(path: Path, fields: Sequence[str] | None, row_groups: Sequence[int] | None = None
                 ) -> Iterator[Piece]:
    """One ``Piece`` per row of a parquet file (of ``row_groups`` only, when given): its ``fields`` columns joined
    by a newline (default ``"text"``)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"reading {path} needs pyarrow (pip install 'draftless[ray]' or pyarrow)") from exc
    names = list(fields) if fields else ["text"]
    parquet = pq.ParquetFile(path)
    missing = [n for n in names if n not in parquet.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (columns: {parquet.schema_arrow.names}); "
                         "choose with --field")
    groups = range(parquet.num_row_groups) if row_groups is None else row_groups
    for group in groups:
        table = parquet.read_row_group(group, columns=names)
        size = table.nbytes // max(table.num_rows, 1)
        columns = [table.column(n).to_pylist() for n in names]
        for i, row in enumerate(zip(*columns)):
            yield Piece(_jsonl_text(dict(zip(names, row)), names, f"{path} row group {group} row {i}"), True, size)


def read_file(file: Path, fields: Sequence[str] | None = None, piece_chars: int = PIECE_CHARS,
              part: tuple | None = None) -> Iterator[Piece]:
    """The documents of one corpus file (by its suffix: jsonl, parquet, else text); ``part``: a jsonl file's byte
    range ``(start, end)`` or a parquet file's row groups ``(g0, g1, ...)``, for a file read in several units."""
    if file.suffix == ".jsonl":
        return read_jsonl(file, fields) if part is None else read_jsonl_range(file, fields, *part)
    if file.suffix == ".parquet":
        return read_parquet(file, fields, part)
    return _read_text(file, piece_chars)


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def corpus_files(paths: Iterable[str | Path], glob: str | None = None, exclude: Sequence[str] = ()) -> list[Path]:
    """The files of a corpus in reading order: directories listed (``list_files``), patterns expanded (sorted);
    ``FileNotFoundError`` for a path that is neither a file, a directory nor a pattern matching one."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += list_files(path, glob, exclude)
        elif path.is_file():
            files.append(path)
        elif _has_magic(str(raw)):
            matched = sorted(Path(p) for p in _glob.glob(str(raw), recursive=True))
            if not matched:
                raise FileNotFoundError(f"corpus pattern matches nothing: {raw}")
            for m in matched:
                files += list_files(m, glob, exclude) if m.is_dir() else [m] if m.is_file() else []
        else:
            raise FileNotFoundError(f"corpus path not found: {path}")
    return files


def iter_pieces(paths: Iterable[str | Path], fields: Sequence[str] | None = None, glob: str | None = None,
                exclude: Sequence[str] = (), piece_chars: int = PIECE_CHARS) -> Iterator[Piece]:
    """Every document of the corpus, in order (see the module docstring for how paths are read)."""
    for path in paths:
        for file in corpus_files([path], glob, exclude):  # path by path: a missing one fails when reached
            yield from read_file(file, fields, piece_chars)


def corpus_bytes(paths: Iterable[str | Path], glob: str | None = None, exclude: Sequence[str] = ()) -> int:
    """Total input size in bytes (the progress bar's total)."""
    total = 0
    for path in paths:
        try:
            total += sum(f.stat().st_size for f in corpus_files([path], glob, exclude))
        except FileNotFoundError:
            pass  # reported when the corpus is read
    return total
