"""The datastore directory convention shared by every store kind (suffix automaton, suffix array, dense, ...).

A datastore is a directory, never a pickle::

    meta.json          {"format": "draftless-datastore", "format_version": 1, "kind": "sam",
                        "tokenizer": {"name", "vocab_hash", "vocab_size"} | null,   (draftless.tokenizer_identity)
                        "build_args": {...}, "n_tokens": int,
                        "files": {"tokens.npy": {"sha256", "size", "dtype", "shape"}, ...},
                        "created": ISO-8601 UTC, ...kind-specific extra keys}
    <name>.npy         one memory-mappable array per entry of "files"

``write_store`` builds the directory beside its destination and renames it into place, so readers never see a
half-written store. ``open_store`` checks everything cheap on every open (format, version, kind, tokenizer, every
file's presence, ``.npy`` header and exact byte size) and the sha256 checksums only on request (``verify="full"``),
because hashing a multi-GB store takes seconds.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_directory
from ..tokenizer_identity import describe_identity, same_tokenizer

FORMAT = "draftless-datastore"
FORMAT_VERSION = 1
META_FILE = "meta.json"
# the keys of meta.json that ``write_store`` sets itself (``extra_meta`` may not hold them)
RESERVED_META = ("format", "format_version", "kind", "tokenizer", "build_args", "n_tokens", "files", "created")


class DatastoreError(ValueError):
    """A datastore is missing, malformed, corrupt, of another kind or built with another tokenizer."""


# ---------------------------------------------------------------------------------------------- writing
def _sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_store(path: Path) -> bool:
    try:
        return json.loads((path / META_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _save_npy(file: Path, array: np.ndarray) -> None:
    """``np.save`` without pickles, written through Python's file object: numpy's own ``tofile`` reports a short
    write (a full disk) as an ``OSError`` without an errno, so the caller could not tell it from a bug."""
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{file.name}: arrays of Python objects cannot be stored (they would need pickles)")
    with open(file, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, np.lib.format.header_data_from_array_1_0(array))
        fh.write(memoryview(array.reshape(-1)).cast("B"))


def write_store(out_dir: str | os.PathLike, kind: str, arrays: Mapping[str, np.ndarray],
                tokenizer_identity: Mapping | None, build_args: Mapping | None = None,
                extra_meta: Mapping | None = None, n_tokens: int | None = None) -> Path:
    """Write ``arrays`` (name -> array, saved as ``name.npy``) and ``meta.json`` atomically to ``out_dir``.

    Everything goes to a temporary directory beside ``out_dir`` first; an existing store at ``out_dir`` is replaced
    only once the new one is complete. A non-empty ``out_dir`` that is not a datastore is never replaced.
    ``n_tokens`` defaults to the length of ``arrays["tokens"]`` when present. Returns ``out_dir`` as a ``Path``.
    """
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (_is_store(out) or not any(out.iterdir()))):
        raise DatastoreError(f"{out} exists and is not a draftless datastore; refusing to replace it")
    for name in arrays:
        if not name or "/" in name or name.startswith(".") or name == Path(META_FILE).stem:
            raise DatastoreError(f"invalid array name {name!r}")
    with atomic_directory(out, replace_existing=True) as tmp:
        files = {}
        for name, array in arrays.items():
            array = np.asarray(array)
            file = tmp / f"{name}.npy"
            _save_npy(file, array)
            files[file.name] = {"sha256": _sha256_file(file), "size": file.stat().st_size,
                                "dtype": array.dtype.str, "shape": list(array.shape)}
        if n_tokens is None:
            n_tokens = int(len(arrays["tokens"])) if "tokens" in arrays else 0
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "tokenizer": dict(tokenizer_identity) if tokenizer_identity is not None else None,
            "build_args": dict(build_args or {}),
            "n_tokens": int(n_tokens),
            "files": files,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for key, value in (extra_meta or {}).items():
            if key in meta:
                raise DatastoreError(f"extra_meta may not override {key!r}")
            meta[key] = value
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Store:
    """An opened datastore: ``meta`` (the parsed ``meta.json``) and ``arrays`` (name -> array, mmapped or loaded)."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def tokenizer(self) -> dict | None:
        return self.meta.get("tokenizer")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def disk_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.meta["files"].values()) + (self.path / META_FILE).stat().st_size


def _read_meta(path: Path) -> dict:
    meta_path = path / META_FILE
    if not path.is_dir():
        raise DatastoreError(f"datastore not found: {path} is not a directory")
    if not meta_path.is_file():
        raise DatastoreError(f"{path} is not a datastore: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatastoreError(f"{meta_path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DatastoreError(f"{path} is not a draftless datastore (format {found!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DatastoreError(
            f"{path} has datastore format version {version}, this draftless reads version {FORMAT_VERSION}; rebuild it"
        )
    for key in ("kind", "files", "n_tokens"):
        if key not in meta:
            raise DatastoreError(f"{meta_path} lacks the key {key!r}")
    return meta


def _check_npy(file: Path, info: Mapping) -> None:
    """Size and header checks: catches truncation, a swapped file or a wrong dtype/shape without reading data."""
    if not file.is_file():
        raise DatastoreError(f"datastore file missing: {file}")
    size = file.stat().st_size
    if size != int(info["size"]):
        raise DatastoreError(f"datastore file {file} is {size} bytes, meta.json says {info['size']}: "
                             "truncated or replaced")
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            header_len = f.tell()
    except (ValueError, OSError) as exc:
        raise DatastoreError(f"datastore file {file} has a corrupt .npy header: {exc}") from exc
    if list(shape) != list(info["shape"]) or dtype.str != info["dtype"] or fortran:
        raise DatastoreError(
            f"datastore file {file} holds {dtype.str}{list(shape)}, meta.json says {info['dtype']}{info['shape']}"
        )
    if header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
        raise DatastoreError(f"datastore file {file}: data size does not match its header (truncated?)")


def verify_checksums(path: str | os.PathLike, meta: Mapping | None = None) -> None:
    """Hash every file and compare with ``meta.json`` (slow: reads the whole store)."""
    path = Path(path)
    meta = meta or _read_meta(path)
    for name, info in meta["files"].items():
        expected = info.get("sha256")
        if expected and _sha256_file(path / name) != expected:
            raise DatastoreError(f"datastore file {path / name} is corrupt: sha256 differs from meta.json")


def open_store(path: str | os.PathLike, expected_kind: str | None = None, tokenizer_identity: Mapping | None = None,
               verify: str = "size", mmap: bool = True) -> Store:
    """Open and check a datastore; raise ``DatastoreError`` naming the problem when it cannot be used.

    ``expected_kind``: refuse a store of another kind. ``tokenizer_identity``: refuse a store built with another
    tokenizer (or one that records none). ``verify``: ``"size"`` (default: presence, ``.npy`` headers and exact
    sizes) or ``"full"`` (also sha256 of every file). ``mmap``: map arrays read-only instead of reading them.
    """
    if verify not in ("size", "full"):
        raise ValueError(f"verify must be 'size' or 'full', not {verify!r}")
    path = Path(path)
    meta = _read_meta(path)
    if expected_kind is not None and meta["kind"] != expected_kind:
        raise DatastoreError(f"{path} is a {meta['kind']!r} datastore, expected {expected_kind!r}")
    if tokenizer_identity is not None and not same_tokenizer(meta.get("tokenizer"), tokenizer_identity):
        recorded = meta.get("tokenizer")
        hint = ""
        if recorded is not None and recorded.get("name") == tokenizer_identity.get("name"):
            hint = " (same name, different vocabulary: a modified tokenizer or a store from another draftless version)"
        raise DatastoreError(
            f"{path} was built with {describe_identity(recorded)}, but the model uses "
            f"{describe_identity(tokenizer_identity)}{hint}; rebuild the datastore with this model's tokenizer"
        )
    for name, info in meta["files"].items():
        _check_npy(path / name, info)
    if verify == "full":
        verify_checksums(path, meta)
    arrays = {}
    for name, info in meta["files"].items():
        # Empty arrays cannot be memory-mapped (a zero-length mapping is an error); read those.
        use_mmap = mmap and int(np.prod(info["shape"], dtype=np.int64)) > 0
        arr = np.load(path / name, mmap_mode="r" if use_mmap else None, allow_pickle=False)
        # A plain ndarray view of the map: same pages, but no np.memmap subclass leaking into arithmetic results.
        arrays[Path(name).stem] = arr.view(np.ndarray) if isinstance(arr, np.memmap) else arr
    return Store(path, meta, arrays)
