"""Atomic directory writes: build everything in a temporary sibling, then rename it into place."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
