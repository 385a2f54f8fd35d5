"""Sharded stores: a directory of ordinary ``"rest"`` stores, each over whole documents, listed by a manifest.

Layout::

    manifest.json      {"format": "draftless-sharded-datastore", "format_version": 1, "kind": "rest",
                        "tokenizer": {...}, "separator_id": int, "n_tokens": int, "n_documents": int,
                        "shards": [{"name": "shard-00000", "n_tokens", "n_documents", "bytes", "meta_sha256",
                                    "files": {"tokens.npy": {"sha256", "size"}, ...}}, ...],
                        "build_args": {...}, "created": ISO-8601 UTC}
    shard-00000/       a "rest" datastore (``datastore.write_store``: meta.json, tokens.npy, sa.npy)
    shard-00001/       ...

Shards are written first (each atomically, by ``write_shard``, from any process or machine sharing the
directory); the manifest is written last, atomically (``write_manifest``), so a directory without one is a build
that did not finish, and is refused as such. Opening (``open_shards``) checks the manifest, then every shard: present,
its ``meta.json`` the one the manifest hashed, the same tokenizer as the manifest (and the caller's), its files'
sizes (and, with ``verify="full"``, their sha256). Every refusal is a ``DatastoreError`` naming the shard.

Shards are cut at document boundaries and their suffix arrays are separator-first, so the store drafts exactly as
one store over the same documents would (``draftless.index.sharded_suffix_array``). ``load_rest_index`` opens either
kind of ``"rest"`` store: what ``rest:DIR`` uses.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..index.sharded_suffix_array import ShardedSuffixArray
from ..index.suffix_array import SuffixArray
from ..tokenizer_identity import describe_identity, same_tokenizer
from .datastore import META_FILE, DatastoreError, Store, _is_store, open_store
from .indexes import load_index, save_index

SHARDED_FORMAT = "draftless-sharded-datastore"
SHARDED_FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "shard-"
UNITS_DIR = ".units"  # a Ray build's tokenized units, removed once the manifest is written


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}"


def is_sharded_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a manifest (a finished sharded store, or one claiming to be)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def _shard_dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith(SHARD_PREFIX))
    except OSError:
        return []


def _sha256_bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- writing
def prepare_sharded_dir(out_dir: str | os.PathLike) -> Path:
    """Make ``out_dir`` ready for a sharded build: created if missing; an earlier store there (sharded, half
    written or single) is unlisted first (its manifest removed, so no reader takes the new build's shards for the
    old store's) and then deleted. A non-empty directory that is no draftless store is refused."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise DatastoreError(f"{out} exists and is not a directory")
        entries = [p for p in out.iterdir() if not p.name.startswith(".")]
        ours = is_sharded_store(out) or _is_store(out) or all(
            p.name.startswith(SHARD_PREFIX) or p.name == MANIFEST_FILE for p in entries)
        if entries and not ours:
            raise DatastoreError(f"{out} exists and is not a draftless datastore; refusing to replace it")
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        (out / META_FILE).unlink(missing_ok=True)
        for p in out.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_shard(tokens: np.ndarray, out_dir: str | os.PathLike, index: int, separator_id: int,
                tokenizer_identity: Mapping | None, n_documents: int, build_args: Mapping | None = None,
                method: str | None = None) -> dict:
    """Build the separator-first suffix array of one shard's ``tokens`` (whole documents joined by
    ``separator_id``) and write it as ``out_dir/shard-NNNNN`` (atomically). Returns its statistics."""
    import time

    t0 = time.perf_counter()
    sa = SuffixArray.build(tokens, method=method, separator=separator_id)
    t1 = time.perf_counter()
    path = save_index(sa, Path(out_dir) / shard_name(index), tokenizer_identity, build_args,
                      {"n_documents": int(n_documents), "shard_index": int(index)})
    return {"name": path.name, "n_tokens": int(len(tokens)), "n_documents": int(n_documents),
            "construct_s": t1 - t0, "write_s": time.perf_counter() - t1}


def write_manifest(out_dir: str | os.PathLike, shard_names: Sequence[str], tokenizer_identity: Mapping | None,
                   separator_id: int, build_args: Mapping | None = None, extra: Mapping | None = None,
                   kind: str = "rest") -> dict:
    """Describe the shards ``shard_names`` of ``out_dir`` (already written) in ``manifest.json``, written atomically:
    the step that makes the store usable. Returns the manifest."""
    out = Path(out_dir)
    shards = []
    for name in shard_names:
        meta_path = out / name / META_FILE
        meta = json.loads(meta_path.read_text())
        files = {f: {"sha256": info["sha256"], "size": int(info["size"])} for f, info in meta["files"].items()}
        shards.append({"name": name, "n_tokens": int(meta["n_tokens"]),
                       "n_documents": int(meta.get("n_documents", 0)),
                       "bytes": sum(f["size"] for f in files.values()) + meta_path.stat().st_size,
                       "meta_sha256": _sha256_bytes(meta_path), "files": files})
    manifest = {
        "format": SHARDED_FORMAT,
        "format_version": SHARDED_FORMAT_VERSION,
        "kind": kind,
        "tokenizer": dict(tokenizer_identity) if tokenizer_identity is not None else None,
        "separator_id": int(separator_id),
        "n_tokens": sum(s["n_tokens"] for s in shards),
        "n_documents": sum(s["n_documents"] for s in shards),
        "shards": shards,
        "build_args": dict(build_args or {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }
    with atomic_file(out / MANIFEST_FILE) as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
    return manifest


# ---------------------------------------------------------------------------------------------- reading
def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatastoreError(f"{manifest_path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT:
        raise DatastoreError(f"{manifest_path} is not a draftless sharded-store manifest")
    version = manifest.get("format_version")
    if version != SHARDED_FORMAT_VERSION:
        raise DatastoreError(f"{path} has sharded-store format version {version}, this draftless reads version "
                             f"{SHARDED_FORMAT_VERSION}; rebuild it")
    for key in ("kind", "shards", "separator_id", "n_tokens"):
        if key not in manifest:
            raise DatastoreError(f"{manifest_path} lacks the key {key!r}")
    if not manifest["shards"]:
        raise DatastoreError(f"{manifest_path} lists no shards")
    return manifest


def store_kind(path: str | os.PathLike) -> str:
    """The kind (``"rest"``, ``"sam"``, ``"dense"``) of the store at ``path``, sharded or not, from its manifest or
    ``meta.json`` alone (nothing else is read); ``DatastoreError`` when ``path`` holds no finished store."""
    from .datastore import _read_meta

    path = Path(path)
    refuse_unfinished(path)
    if (path / MANIFEST_FILE).is_file():
        return str(_read_manifest(path)["kind"])
    return str(_read_meta(path)["kind"])


def refuse_unfinished(path: str | os.PathLike) -> None:
    """Raise the half-written-store error when ``path`` holds shards (or a Ray build's units) but neither a manifest
    nor a ``meta.json``."""
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST_FILE).exists() and not (path / META_FILE).exists():
        shards = _shard_dirs(path)
        if shards or (path / UNITS_DIR).is_dir():
            raise DatastoreError(
                f"{path} holds {len(shards)} shard directories but no {MANIFEST_FILE}: a sharded build that did not "
                "finish (interrupted, killed or still running); rebuild it")


def open_shards(path: str | os.PathLike, expected_kind: str | None = None, tokenizer_identity: Mapping | None = None,
                verify: str = "size", mmap: bool = True) -> tuple[dict, list[Store]]:
    """Open a sharded store: ``(manifest, [Store per shard])``, every check of the module docstring made.
    ``tokenizer_identity``: refuse a store built with another tokenizer; ``verify="full"``: hash every file."""
    path = Path(path)
    if not path.is_dir():
        raise DatastoreError(f"datastore not found: {path} is not a directory")
    refuse_unfinished(path)
    manifest = _read_manifest(path)
    if expected_kind is not None and manifest["kind"] != expected_kind:
        raise DatastoreError(f"{path} is a sharded {manifest['kind']!r} datastore, expected {expected_kind!r}")
    recorded = manifest.get("tokenizer")
    if tokenizer_identity is not None and not same_tokenizer(recorded, tokenizer_identity):
        raise DatastoreError(
            f"{path} was built with {describe_identity(recorded)}, but the model uses "
            f"{describe_identity(tokenizer_identity)}; rebuild the datastore with this model's tokenizer")
    stores = []
    for entry in manifest["shards"]:
        name = str(entry.get("name", ""))
        shard = path / name
        where = f"shard {name} of {path}"
        if not name.startswith(SHARD_PREFIX) or "/" in name or not shard.is_dir():
            raise DatastoreError(f"{where} is missing: the manifest lists it, the directory is not there")
        meta_path = shard / META_FILE
        if not meta_path.is_file():
            raise DatastoreError(f"{where} is not a datastore: {META_FILE} is missing")
        try:
            theirs = json.loads(meta_path.read_text()).get("tokenizer")
        except (OSError, ValueError, AttributeError):
            theirs = recorded  # unreadable: the checksum below names it
        if recorded is not None and not same_tokenizer(theirs, recorded):
            raise DatastoreError(f"{where} was built with {describe_identity(theirs)}, the store with "
                                 f"{describe_identity(recorded)}; rebuild the store")
        if _sha256_bytes(meta_path) != entry.get("meta_sha256"):
            raise DatastoreError(f"{where} is corrupt or was replaced: its {META_FILE} sha256 differs from the "
                                 "manifest's")
        try:
            store = open_store(shard, expected_kind=manifest["kind"], tokenizer_identity=recorded, verify=verify,
                               mmap=mmap)
        except DatastoreError as exc:
            raise DatastoreError(f"{where}: {exc}") from exc
        listed = {f: (info.get("sha256"), int(info.get("size", -1))) for f, info in entry.get("files", {}).items()}
        held = {f: (info["sha256"], int(info["size"])) for f, info in store.meta["files"].items()}
        if listed != held or int(entry.get("n_tokens", -1)) != int(store.meta["n_tokens"]):
            raise DatastoreError(f"{where} does not hold the files the manifest lists (replaced or corrupt)")
        if store.meta.get("separator_id") != manifest["separator_id"]:
            raise DatastoreError(f"{where} separates documents with {store.meta.get('separator_id')}, the manifest "
                                 f"says {manifest['separator_id']}")
        stores.append(store)
    return manifest, stores


def load_rest_index(path: str | os.PathLike, tokenizer_identity: Mapping | None = None,
                    verify: str = "size") -> SuffixArray | ShardedSuffixArray:
    """Open a ``"rest"`` store memory-mapped: a ``ShardedSuffixArray`` for a sharded one, else a ``SuffixArray``
    (``load_index``). ``DatastoreError`` naming the problem (and the shard) when it cannot be used."""
    path = Path(path)
    refuse_unfinished(path)
    if not is_sharded_store(path):
        return load_index(SuffixArray, path, tokenizer_identity=tokenizer_identity, verify=verify, mmap=True)
    manifest, stores = open_shards(path, SuffixArray.kind, tokenizer_identity, verify=verify, mmap=True)
    shards = []
    for entry, store in zip(manifest["shards"], stores):
        try:
            shards.append(SuffixArray.from_arrays(store.arrays, store.meta))
        except ValueError as exc:
            raise DatastoreError(f"shard {entry['name']} of {path}: {exc}") from exc
    try:
        return ShardedSuffixArray(shards, manifest)
    except ValueError as exc:
        raise DatastoreError(f"{path}: {exc}") from exc
