"""The repository stands on its own: no tracked file points at a shared folder beside the checkout or at the
benchmark data's old location (it ships in the package, ``draftless/data/bench``)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# spelled in pieces so that this file does not match its own search
FORBIDDEN = ("../" + "shared", "shared" + "/bench")


def tracked_files() -> list[Path]:
    try:
        # tracked files and new ones git would add (not ignored): what a commit of this tree would ship
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_path_outside_the_repository():
    offenders = {}
    for path in tracked_files():
        if path.resolve() == Path(__file__).resolve() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        text = data.decode("utf-8", errors="replace")
        hits = [s for s in FORBIDDEN if s in text]
        if hits:
            offenders[str(path.relative_to(REPO))] = hits
    assert not offenders, "paths outside the repository: " + ", ".join(f"{f} ({', '.join(h)})"
                                                                        for f, h in sorted(offenders.items()))
