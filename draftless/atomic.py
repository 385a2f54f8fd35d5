"""Atomic writes: build a file or a directory in a temporary sibling, then rename it into place.

A reader (another process, a crashed run's successor) sees either the old content or the new one, never a half
written file: ``os.replace`` is atomic within one filesystem, and the sibling lives in the same directory. A write
that fails for want of space (a full disk, a quota, a file-size limit) raises ``StorageFullError`` naming the
target and saying that it was left as it was.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# errno values that mean "no room for this write" rather than a bug or a permission problem
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class StorageFullError(OSError):
    """A write ran out of room (``errno`` ENOSPC, EFBIG or EDQUOT); what it was replacing is unchanged."""


def _no_room(exc: BaseException, target: Path) -> StorageFullError | None:
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return StorageFullError(exc.errno, f"could not write {target}: {exc.strerror} (no room on its filesystem, "
                                           f"or a file-size limit); {target} was left as it was")
    return None


@contextmanager
def atomic_directory(out_dir: str | os.PathLike, replace_existing: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out_dir``; on success it becomes ``out_dir``, on any error it is
    removed and ``out_dir`` is untouched. With ``replace_existing`` an existing ``out_dir`` is moved aside first and
    deleted only once the new one is in (two renames), otherwise the caller must have checked it does not exist."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; what we write is meant to be shared like any built artefact
        yield tmp
        if replace_existing and out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _no_room(exc, out)
        if full is not None:
            raise full from exc
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """Yield an open file (``mode`` ``"w"`` or ``"wb"``) beside ``path``; on success it replaces ``path``, on any
    error it is removed and ``path`` is untouched. The parent directory is created if missing."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a whole file: mode 'w' or 'wb', not {mode!r}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it the file: a power cut leaves old or new
        os.replace(tmp, out)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = _no_room(exc, out)
        if full is not None:
            raise full from exc
        raise
