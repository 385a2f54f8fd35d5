"""The datastore directory convention: round trip, atomic replacement, and every refusal; corpus reading; build."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CharTokenizer

from draftless.index.suffix_automaton import SuffixAutomaton
from draftless.stores.build import build_store
from draftless.stores.corpus import tokenize_corpus
from draftless.stores.datastore import (
    FORMAT,
    FORMAT_VERSION,
    DatastoreError,
    open_store,
    verify_checksums,
    write_store,
)
from draftless.stores.documents import iter_pieces
from draftless.stores.indexes import load_index
from draftless.stores.kinds import BUILDERS
from draftless.tokenizer_identity import tokenizer_identity

ARRAYS = {"tokens": np.arange(100, dtype=np.int32), "table": np.arange(12, dtype=np.float32).reshape(3, 4)}


@pytest.fixture
def identity():
    return tokenizer_identity(CharTokenizer())


@pytest.fixture
def store(tmp_path, identity):
    return write_store(tmp_path / "store", "toy", ARRAYS, identity, build_args={"x": 1}, extra_meta={"note": "hi"})


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_and_meta(store, identity):
    meta = json.loads((store / "meta.json").read_text())
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION and meta["kind"] == "toy"
    assert meta["tokenizer"] == identity and meta["build_args"] == {"x": 1} and meta["note"] == "hi"
    assert meta["n_tokens"] == 100 and meta["created"]
    info = meta["files"]["table.npy"]
    assert info["dtype"] == "<f4" and info["shape"] == [3, 4] and len(info["sha256"]) == 64
    assert info["size"] == (store / "table.npy").stat().st_size
    opened = open_store(store, "toy", identity, verify="full")
    for name, arr in ARRAYS.items():
        np.testing.assert_array_equal(opened[name], arr)
        assert isinstance(opened[name].base, np.memmap) or isinstance(opened[name], np.memmap)
        assert not opened[name].flags.writeable
    assert open_store(store, mmap=False)["table"].flags.writeable


def test_replace_existing_store_atomically(store, identity):
    write_store(store, "toy", {"tokens": np.zeros(5, np.int32)}, identity)
    assert open_store(store)["tokens"].shape == (5,)
    assert not open_store(store).meta.get("note")
    assert [p.name for p in store.parent.iterdir()] == ["store"]  # no temporary or old directories left


def test_failed_write_keeps_old_store(store, identity):
    with pytest.raises(ValueError):
        write_store(store, "toy", {"tokens": np.array([object()], dtype=object)}, identity)
    np.testing.assert_array_equal(open_store(store)["tokens"], ARRAYS["tokens"])
    assert [p.name for p in store.parent.iterdir()] == ["store"]


def test_refuses_to_replace_a_foreign_directory(tmp_path, identity):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DatastoreError, match="not a draftless datastore"):
        write_store(precious, "toy", ARRAYS, identity)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_error_is_a_value_error():
    assert issubclass(DatastoreError, ValueError)


# ------------------------------------------------------------------------------------------ refusals
def edit_meta(store: Path, **changes):
    meta = json.loads((store / "meta.json").read_text())
    meta.update(changes)
    (store / "meta.json").write_text(json.dumps(meta))


def test_refuses_missing_directory_and_meta(tmp_path):
    with pytest.raises(DatastoreError, match="not found"):
        open_store(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatastoreError, match="meta.json is missing"):
        open_store(tmp_path / "empty")


def test_refuses_wrong_format_and_version(store):
    edit_meta(store, format_version=FORMAT_VERSION + 1)
    with pytest.raises(DatastoreError, match="format version"):
        open_store(store)
    edit_meta(store, format="something-else", format_version=FORMAT_VERSION)
    with pytest.raises(DatastoreError, match="not a draftless datastore"):
        open_store(store)
    (store / "meta.json").write_text("{not json")
    with pytest.raises(DatastoreError, match="not JSON"):
        open_store(store)


def test_refuses_wrong_kind(store):
    with pytest.raises(DatastoreError, match="'toy' datastore, expected 'sam'"):
        open_store(store, expected_kind="sam")


def test_refuses_foreign_tokenizer_naming_both(store):
    other = tokenizer_identity(CharTokenizer("gemma-ish", shift=5))
    with pytest.raises(DatastoreError) as err:
        open_store(store, tokenizer_identity=other)
    assert "'chars'" in str(err.value) and "'gemma-ish'" in str(err.value)
    # Same vocabulary under another folder name is the same tokenizer
    open_store(store, tokenizer_identity=tokenizer_identity(CharTokenizer("renamed")))


def test_refuses_store_without_tokenizer_when_one_is_expected(tmp_path, identity):
    path = write_store(tmp_path / "anon", "toy", ARRAYS, None)
    open_store(path)
    with pytest.raises(DatastoreError, match="unrecorded tokenizer"):
        open_store(path, tokenizer_identity=identity)


def test_refuses_missing_truncated_or_swapped_arrays(store):
    data = (store / "table.npy").read_bytes()
    (store / "table.npy").write_bytes(data[:-4])
    with pytest.raises(DatastoreError, match="truncated"):
        open_store(store)
    # same size, different header (dtype): caught without reading data
    np.save(store / "table.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    with pytest.raises(DatastoreError, match="meta.json says"):
        open_store(store)
    (store / "table.npy").unlink()
    with pytest.raises(DatastoreError, match="missing"):
        open_store(store)


def test_corrupt_data_is_caught_by_full_verification(store):
    raw = bytearray((store / "tokens.npy").read_bytes())
    raw[-1] ^= 0xFF
    (store / "tokens.npy").write_bytes(bytes(raw))
    open_store(store)  # sizes and headers still match
    with pytest.raises(DatastoreError, match="sha256"):
        open_store(store, verify="full")
    with pytest.raises(DatastoreError, match="corrupt"):
        verify_checksums(store)


def test_tokenizer_identity():
    a = tokenizer_identity(CharTokenizer())
    assert a == tokenizer_identity(CharTokenizer()) and a["name"] == "chars" and a["vocab_size"] == 98
    assert tokenizer_identity(CharTokenizer(shift=1))["vocab_hash"] != a["vocab_hash"]


# ------------------------------------------------------------------------------------------ corpus and build
def test_corpus_readers_and_separators(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"q": "ab", "a": "cd", "z": 1}) + "\n\n"
                                      + json.dumps({"q": "e", "a": "f"}) + "\n")
    src = tmp_path / "src"
    (src / "pkg" / "site-packages").mkdir(parents=True)
    (src / "x.py").write_text("xx")
    (src / "pkg" / "y.py").write_text("yy")
    (src / "pkg" / "notes.txt").write_text("no")
    (src / "pkg" / "site-packages" / "z.py").write_text("zz")
    (tmp_path / "plain.txt").write_text("hello")
    texts = [p.text for p in iter_pieces([tmp_path / "a.jsonl"], fields=["q", "a"])]
    assert texts == ["ab\ncd", "e\nf"]
    with pytest.raises(ValueError, match="no field 'text'"):
        list(iter_pieces([tmp_path / "a.jsonl"]))
    texts = [p.text for p in iter_pieces([src], glob="*.py", exclude=["site-packages"])]
    assert texts == ["yy", "xx"]  # sorted paths: pkg/y.py before x.py
    tok = CharTokenizer()
    corpus = tokenize_corpus([tmp_path / "a.jsonl", tmp_path / "plain.txt"], tok, fields=["q", "a"], progress=False)
    expected = (tok(["ab\ncd"])["input_ids"][0] + [0] + tok(["e\nf"])["input_ids"][0] + [0]
                + tok(["hello"])["input_ids"][0])
    assert corpus.tokens.dtype == np.int32 and corpus.tokens.tolist() == expected
    assert corpus.n_documents == 3 and corpus.separator_id == 0
    with pytest.raises(FileNotFoundError):
        tokenize_corpus([tmp_path / "missing.txt"], tok, progress=False)


def test_large_plain_text_is_read_in_pieces(tmp_path):
    (tmp_path / "big.txt").write_text("line one\nline two\nline three\n")
    pieces = list(iter_pieces([tmp_path / "big.txt"], piece_chars=8))
    assert len(pieces) > 1 and pieces[0].starts_document and not any(p.starts_document for p in pieces[1:])
    assert "".join(p.text for p in pieces) == "line one\nline two\nline three\n"
    corpus = tokenize_corpus([tmp_path / "big.txt"], CharTokenizer(), piece_chars=8, progress=False)
    assert 0 not in corpus.tokens.tolist()  # pieces of one document are not separated


def test_build_store_sam(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ["abcabc", "xyz", "abcd"]))
    tok = CharTokenizer()
    report = build_store("sam", [tmp_path / "c.jsonl"], tok, tmp_path / "store", progress=False)
    printed = capsys.readouterr().out
    assert "bytes/token" in printed and "excluding tokenization" in printed
    assert report.n_tokens == 6 + 1 + 3 + 1 + 4 and report.bytes_per_token > 0
    sam = load_index(SuffixAutomaton, tmp_path / "store", tokenizer_identity=tokenizer_identity(tok), verify="full")
    ids = tok(["abc"])["input_ids"][0]
    assert sam.occurrences(ids) == 3
    assert sam.store_meta["separator_id"] == 0 and sam.store_meta["build_args"]["kind"] == "sam"
    with pytest.raises(ValueError, match="unknown datastore kind"):
        build_store("nope", [tmp_path / "c.jsonl"], tok, tmp_path / "x", progress=False)
    assert "sam" in BUILDERS
