"""Writes that run out of room: a datastore, a history and a single file written while the process may not write
more than a few KiB per file (``RLIMIT_FSIZE``: the kernel refuses the write with EFBIG, as a full disk refuses it
with ENOSPC). Each must fail with a ``StorageFullError`` that names the target, and leave what was there intact.

The limit is set in a child process (it would hold for the rest of the test run otherwise), after the imports."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from draftless.atomic import atomic_file
from draftless.history.store import HistoryStore
from draftless.stores.datastore import open_store, write_store

IDENTITY = {"name": "tiny-test-tokenizer", "vocab_size": 64, "vocab_sha256": "0" * 64}
LIMIT_BYTES = 16 * 1024  # a store's small files fit; a 4 MB array does not

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")


def _run_limited(body: str) -> dict:
    """Run ``body`` (which sets ``result``) in a child whose files may not grow past ``LIMIT_BYTES``."""
    script = textwrap.dedent("""
        import json, resource, signal, sys
        import numpy as np
        from draftless.atomic import StorageFullError, atomic_file
        from draftless.history.store import HistoryStore
        from draftless.stores.datastore import write_store
        IDENTITY = json.loads(sys.argv[2])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
        target = sys.argv[1]
        result = {}
    """) + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    return lambda target: json.loads(subprocess.run(
        [sys.executable, "-c", script, str(target), json.dumps(IDENTITY), str(LIMIT_BYTES)],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


REPLACE_STORE = _run_limited("""
    try:
        write_store(target, "test-kind", {"tokens": np.arange(1_000_000, dtype=np.int32)}, IDENTITY)
        result["raised"] = None
    except StorageFullError as exc:
        result["raised"] = str(exc)
""")


def test_a_store_replaced_on_a_full_disk_stays_the_previous_store(tmp_path):
    out = tmp_path / "store"
    write_store(out, "test-kind", {"tokens": np.arange(100, dtype=np.int32)}, IDENTITY)
    result = REPLACE_STORE(out)
    assert result["raised"] is not None and str(out) in result["raised"] and "left as it was" in result["raised"]
    store = open_store(out, expected_kind="test-kind", tokenizer_identity=IDENTITY)
    assert np.array_equal(store["tokens"], np.arange(100, dtype=np.int32))
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no temporary directory left beside it


def test_a_new_store_on_a_full_disk_is_absent(tmp_path):
    out = tmp_path / "store"
    result = REPLACE_STORE(out)
    assert result["raised"] is not None and not out.exists() and not list(tmp_path.iterdir())


SAVE_HISTORY = _run_limited("""
    store = HistoryStore.open(target, IDENTITY)
    before = store.n_tokens
    try:
        store.record(None, np.arange(200_000) % 60)  # the automatic save after a record: warns, keeps it
        result["recorded"] = True
    except Exception as exc:
        result["recorded"] = repr(exc)
    result["in_memory"] = store.n_tokens - before
    try:
        store.save()  # an explicit save says why it failed
        result["raised"] = None
    except StorageFullError as exc:
        result["raised"] = str(exc)
""")


def test_a_history_saved_on_a_full_disk_keeps_the_last_complete_save(tmp_path):
    path = tmp_path / "history"
    store = HistoryStore.open(path, IDENTITY)
    store.record(None, np.arange(50) % 60)
    store.record("chat", np.arange(30) % 60)
    expected = {ns: [seg.n_tokens for seg in store.segments(ns)] for ns in (None, "chat")}
    result = SAVE_HISTORY(path)
    assert result["recorded"] is True and result["in_memory"] >= 200_000  # the generation's record is not lost
    assert result["raised"] is not None and "left as it was" in result["raised"]
    reloaded = HistoryStore.open(path, IDENTITY)
    assert {ns: [seg.n_tokens for seg in reloaded.segments(ns)] for ns in (None, "chat")} == expected


WRITE_FILE = _run_limited("""
    try:
        with atomic_file(target) as fh:
            fh.write("x" * 100_000)
        result["raised"] = None
    except StorageFullError as exc:
        result["raised"] = str(exc)
""")


def test_a_file_written_on_a_full_disk_keeps_its_old_content(tmp_path):
    target = tmp_path / "curve.json"
    with atomic_file(target) as fh:
        fh.write('{"old": true}')
    result = WRITE_FILE(target)
    assert result["raised"] is not None and str(target) in result["raised"]
    assert target.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["curve.json"]
