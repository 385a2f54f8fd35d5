"""Sharded ``rest`` stores: drafts identical to one store over the same documents, and every refusal (missing,
corrupt or foreign shard, a build killed before its manifest)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CharTokenizer, check_tree, damaged_copy
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.drafters.rest import RestDrafter
from draftless.index.sharded_suffix_array import ShardedSuffixArray
from draftless.index.suffix_array import SuffixArray
from draftless.stores.build import build_sharded_store, build_store
from draftless.stores.datastore import DatastoreError
from draftless.stores.sharded import MANIFEST_FILE, load_rest_index, write_manifest, write_shard
from draftless.tokenizer_identity import tokenizer_identity

TEMPLATES = ["def {a}({b}, {c}):\n    return {b} {op} {c}\n", "for {b} in range({c}):\n    {a}.append({b} {op} 1)\n",
             "class {a}:\n    def __init__(self, {b}):\n        self.{b} = {b}\n", "# {a} {op} {b}\nprint({a}({c}))\n",
             "if {b} {op} {c}:\n    raise ValueError('{a}')\n"]
NAMES = ["add", "mul", "total", "items", "x", "y", "count", "value", "node", "key"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        lines = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(
            a=NAMES[int(rng.integers(len(NAMES)))], b=NAMES[int(rng.integers(len(NAMES)))],
            c=NAMES[int(rng.integers(len(NAMES)))], op="+-*/<"[int(rng.integers(5))])
            for _ in range(int(rng.integers(1, 6)))]
        docs.append("".join(lines))
    return docs


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One store and a 5-shard store of the same 60 documents (jsonl), and the corpus file."""
    root = tmp_path_factory.mktemp("sharded")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(60)))
    tok = CharTokenizer()
    one = build_store("rest", [corpus], tok, root / "one", progress=False, verbose=False).out_dir
    report = build_sharded_store([corpus], tok, root / "sharded", shards=5, progress=False, verbose=False,
                                 batch_chars=500)
    return one, report.out_dir, corpus


def contexts(tokens: np.ndarray, rng, count: int) -> list[np.ndarray]:
    """Pieces of the corpus (separators included), mutated tails and random tokens."""
    out = []
    for i in range(count):
        end = int(rng.integers(2, len(tokens)))
        ctx = np.array(tokens[max(0, end - int(rng.integers(1, 30))): end], dtype=np.int64)
        if i % 3 == 1:
            ctx[-1] = int(rng.integers(0, 100))
        elif i % 7 == 2:
            ctx = rng.integers(0, 100, int(rng.integers(1, 12)))
        out.append(ctx)
    return out


def same_tree(a, b) -> bool:
    return (np.array_equal(a.tokens, b.tokens) and np.array_equal(a.parents, b.parents)
            and np.array_equal(a.scores, b.scores))


# ------------------------------------------------------------------------------------------ identical drafts
def test_sharded_store_layout(stores):
    one, sharded, _ = stores
    manifest = json.loads((sharded / MANIFEST_FILE).read_text())
    assert manifest["format"] == "draftless-sharded-datastore" and manifest["kind"] == "rest"
    assert len(manifest["shards"]) == 5 and manifest["tokenizer"] == tokenizer_identity(CharTokenizer())
    for entry in manifest["shards"]:
        assert (sharded / entry["name"] / "meta.json").is_file() and len(entry["meta_sha256"]) == 64
        assert entry["bytes"] > 0 and set(entry["files"]) == {"tokens.npy", "sa.npy"}
    index = load_rest_index(sharded)
    single = load_rest_index(one)
    assert isinstance(index, ShardedSuffixArray) and isinstance(single, SuffixArray)
    # the shards are the one store's documents, cut at separators
    sep = single.separator_id
    joined = np.concatenate([np.concatenate([s.tokens, [sep]]) for s in index.shards])[:-1]
    assert np.array_equal(joined, single.tokens) and len(index) == len(single) - 4
    assert manifest["n_documents"] == single.store_meta["n_documents"] == 60


@pytest.mark.parametrize("max_occurrences", [3, 64])
def test_sharded_drafts_equal_one_store(stores, max_occurrences):
    """Over many contexts, with sampling (3 occurrences of many) and without: the very same trees."""
    one, sharded, _ = stores
    kwargs = dict(max_occurrences=max_occurrences, max_depth=12, min_score=0.0)
    d1, d2 = RestDrafter(one, CharTokenizer(), **kwargs), RestDrafter(sharded, CharTokenizer(), **kwargs)
    rng = np.random.default_rng(1)
    drafted = 0
    for ctx in contexts(d1.sa.tokens, rng, 400):
        t1, t2 = d1.draft(ctx, 24), d2.draft(ctx, 24)
        check_tree(t2, ctx, 24)
        assert same_tree(t1, t2), ctx
        assert d1.last_match == d2.last_match
        drafted += len(t1) > 1
    assert drafted > 200


def _join(docs: list[list[int]], sep: int) -> np.ndarray:
    out: list[int] = []
    for i, d in enumerate(docs):
        out += ([sep] if i else []) + d
    return np.asarray(out, dtype=np.int32)


@settings(max_examples=60, deadline=None)
@given(docs=st.lists(st.lists(st.integers(1, 4), max_size=25), min_size=2, max_size=12),
       cuts=st.sets(st.integers(1, 11), max_size=5), limit=st.sampled_from([1, 2, 5, 64]),
       ctxs=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=12), min_size=1, max_size=10))
def test_any_sharding_drafts_like_one_array(docs, cuts, limit, ctxs):
    """Random documents over a tiny alphabet (long repeats, many ties), cut anywhere between documents."""
    sep = 0
    bounds = [0, *sorted(c for c in cuts if c < len(docs)), len(docs)]
    one = SuffixArray.build(_join(docs, sep), separator=sep)
    sharded = ShardedSuffixArray([SuffixArray.build(_join(docs[a:b], sep), separator=sep)
                                  for a, b in zip(bounds, bounds[1:])])
    kwargs = dict(max_occurrences=limit, max_depth=5, min_score=0.0)
    d1, d2 = RestDrafter(one, **kwargs), RestDrafter(sharded, **kwargs)
    for ctx in ctxs:
        ctx = np.asarray(ctx, dtype=np.int64)
        assert same_tree(d1.draft(ctx, 16), d2.draft(ctx, 16))


def test_matches_stay_inside_documents(tmp_path):
    """A separator-first store never matches across a separator; a plain store (as built before sharding, its
    meta.json without "sa_order") still opens and drafts as it did."""
    from draftless.stores.indexes import save_index

    docs = [[5, 6, 7], [8, 9, 5, 6, 7, 1, 2]]
    tokens = _join(docs, 0)
    new = RestDrafter(SuffixArray.build(tokens, separator=0), min_score=0.0)
    save_index(SuffixArray.build(tokens), tmp_path / "plain", None, extra_meta={"separator_id": 0})
    assert "sa_order" not in json.loads((tmp_path / "plain" / "meta.json").read_text())
    old = RestDrafter(tmp_path / "plain", min_score=0.0)
    assert old.sa.separator is None and old.sa.separator_id == 0
    ctx = np.array([3, 7, 0, 8, 9], dtype=np.int64)  # "...7 SEP 8 9": spans the two documents
    old.draft(ctx, 8)
    assert old.last_match == 4  # 7 SEP 8 9
    tree = new.draft(ctx, 8)
    assert new.last_match == 2 and tree.tokens[1:].tolist()[:1] == [5]  # 8 9 -> 5 6 7 1 2


@settings(max_examples=80, deadline=None)
@given(docs=st.lists(st.lists(st.integers(1, 3), max_size=30), min_size=1, max_size=20),
       cuts=st.sets(st.integers(1, 19), max_size=6), depth=st.integers(1, 6), data=st.data())
def test_select_ranks_matches_a_full_merge(docs, cuts, depth, data):
    """The kernel's multi-sequence selection against sorting every occurrence's key: same keys at every rank."""
    from numba.typed import List

    from draftless.index.kernels import suffix_array_kernels as K

    bounds = [0, *sorted(c for c in cuts if c < len(docs)), len(docs)]
    shards = [SuffixArray.build(_join(docs[a:b], 0), separator=0) for a, b in zip(bounds, bounds[1:])]
    pattern = np.asarray(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)), dtype=np.int64)
    ranges = np.array([s.find(pattern) for s in shards], dtype=np.int64).reshape(-1, 2)
    total = int((ranges[:, 1] - ranges[:, 0]).sum())

    def key(tokens, start):
        out = []
        for t in tokens[start: start + depth].tolist():
            if t == 0:
                break
            out.append(t)
        return out

    every = sorted(key(s.tokens, int(p) + len(pattern)) for s, (lo, hi) in zip(shards, ranges) for p in s.sa[lo:hi])
    targets = np.asarray(sorted(data.draw(st.sets(st.integers(0, max(total - 1, 0)), max_size=total))),
                         dtype=np.int64) if total else np.zeros(0, dtype=np.int64)
    toks = List([s.tokens for s in shards])
    sas = List([s.sa for s in shards])
    shard, starts = K.select_ranks(toks, sas, np.ascontiguousarray(ranges[:, 0]), np.ascontiguousarray(ranges[:, 1]),
                                   len(pattern), depth, 0, targets)
    assert [key(shards[s].tokens, int(p)) for s, p in zip(shard, starts)] == [every[r] for r in targets]


def test_large_ranges_are_sampled_alike():
    """Thousands of occurrences of a short match, sampled to 64, across 7 uneven shards."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(1, 6, int(rng.integers(5, 400))).tolist() for _ in range(200)]
    bounds = [0, 3, 4, 50, 51, 120, 199, 200]
    one = RestDrafter(SuffixArray.build(_join(docs, 0), separator=0), min_suffix=1, max_suffix=3)
    sharded = RestDrafter(ShardedSuffixArray([SuffixArray.build(_join(docs[a:b], 0), separator=0)
                                              for a, b in zip(bounds, bounds[1:])]), min_suffix=1, max_suffix=3)
    for ctx in rng.integers(1, 6, (50, 3)):
        assert same_tree(one.draft(ctx, 32), sharded.draft(ctx, 32))


# ------------------------------------------------------------------------------------------ refusals
def test_missing_shard_is_named(stores, tmp_path):
    _, sharded, _ = stores
    broken = shutil.copytree(sharded, tmp_path / "s")
    shutil.rmtree(broken / "shard-00002")
    with pytest.raises(DatastoreError, match="shard shard-00002 of .* is missing"):
        RestDrafter(broken)


def test_corrupt_shard_is_named(stores, tmp_path):
    _, sharded, _ = stores
    # a flipped byte in a shard's data: found by its checksum (verify="full")
    broken = shutil.copytree(sharded, tmp_path / "data")
    damaged_copy(broken / "shard-00001", tmp_path / "tmp", "tokens.npy", "flip")
    shutil.rmtree(broken / "shard-00001")
    shutil.move(tmp_path / "tmp", broken / "shard-00001")
    RestDrafter(broken)  # sizes and headers are intact: the default check passes
    with pytest.raises(DatastoreError, match="shard shard-00001 .*sha256"):
        RestDrafter(broken, verify="full")
    # a truncated file: found on every open
    cut = shutil.copytree(sharded, tmp_path / "cut")
    raw = (cut / "shard-00003" / "tokens.npy").read_bytes()
    (cut / "shard-00003" / "tokens.npy").write_bytes(raw[:-8])
    with pytest.raises(DatastoreError, match="shard shard-00003 .*truncated"):
        RestDrafter(cut)
    # an edited meta.json: its sha256 is in the manifest
    edited = shutil.copytree(sharded, tmp_path / "meta")
    meta = json.loads((edited / "shard-00000" / "meta.json").read_text())
    meta["n_documents"] += 1
    (edited / "shard-00000" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatastoreError, match="shard shard-00000 .*corrupt or was replaced"):
        RestDrafter(edited)


def test_foreign_tokenizer_is_refused(stores, tmp_path):
    _, sharded, corpus = stores
    foreign = CharTokenizer("other-model", shift=3)
    with pytest.raises(DatastoreError, match="other-model"):
        RestDrafter(sharded, foreign)
    # one shard rebuilt with another tokenizer, the manifest rewritten over it: still refused, naming the shard
    mixed = shutil.copytree(sharded, tmp_path / "mixed")
    shard = load_rest_index(mixed).shards[4]
    shutil.rmtree(mixed / "shard-00004")
    write_shard(np.asarray(shard.tokens), mixed, 4, shard.separator, tokenizer_identity(foreign), 3)
    manifest = json.loads((mixed / MANIFEST_FILE).read_text())
    write_manifest(mixed, [s["name"] for s in manifest["shards"]], manifest["tokenizer"], manifest["separator_id"])
    with pytest.raises(DatastoreError, match="shard shard-00004 .*other-model"):
        RestDrafter(mixed, CharTokenizer())


def test_rebuild_replaces_and_refuses_foreign_directories(stores, tmp_path):
    _, _, corpus = stores
    out = tmp_path / "s"
    build_sharded_store([corpus], CharTokenizer(), out, shards=4, progress=False, verbose=False, batch_chars=500)
    build_sharded_store([corpus], CharTokenizer(), out, shards=2, progress=False, verbose=False, batch_chars=500)
    assert len(load_rest_index(out).shards) == 2 and sorted(p.name for p in out.iterdir()) == [
        MANIFEST_FILE, "shard-00000", "shard-00001"]
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DatastoreError, match="not a draftless datastore"):
        build_sharded_store([corpus], CharTokenizer(), precious, shards=2, progress=False, verbose=False)
    assert (precious / "notes.txt").read_text() == "keep me"


KILLED_BUILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from conftest import CharTokenizer
    from draftless.stores.build import build_sharded_store

    class Slow(CharTokenizer):
        def __call__(self, texts, **kw):
            time.sleep(0.05)
            return super().__call__(texts, **kw)

    build_sharded_store([{corpus!r}], Slow(), {out!r}, shards=8, progress=False, verbose=False, batch_chars=200)
""")


def test_a_killed_build_is_refused_until_rebuilt(stores, tmp_path):
    """SIGKILL a build between its shards and its manifest: the directory is refused as unfinished."""
    _, _, corpus = stores
    out = tmp_path / "killed"
    script = KILLED_BUILD.format(tests=str(Path(__file__).parent), corpus=str(corpus), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 120
        while not (out / "shard-00001" / "meta.json").exists():
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / MANIFEST_FILE).exists()
    with pytest.raises(DatastoreError, match="no manifest.json: a sharded build that did not finish"):
        RestDrafter(out)
    build_sharded_store([corpus], CharTokenizer(), out, shards=3, progress=False, verbose=False, batch_chars=500)
    assert len(load_rest_index(out).shards) == 3


def test_cli_builds_a_sharded_store(tiny_folder, tmp_path):
    from conftest import WORDS

    from draftless.app.cli import main

    corpus = tmp_path / "c.jsonl"
    rng = np.random.default_rng(0)
    corpus.write_text("".join(json.dumps({"text": " ".join(rng.choice(WORDS, 40))}) + "\n" for _ in range(30)))
    assert main(["build", "--kind", "rest", "--corpus", str(corpus), "--model", str(tiny_folder), "--shards", "4",
                 "--out", str(tmp_path / "s")]) == 0
    assert len(json.loads((tmp_path / "s" / MANIFEST_FILE).read_text())["shards"]) == 4
    with pytest.raises(SystemExit, match="rest"):
        main(["build", "--kind", "sam", "--corpus", str(corpus), "--model", str(tiny_folder), "--shards", "2",
              "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--ray"):
        main(["build", "--kind", "rest", "--corpus", str(corpus), "--model", str(tiny_folder), "--shards", "2",
              "--address", "auto", "--out", str(tmp_path / "x")])


def test_auto_fuses_a_rest_store_as_a_source(tiny_folder, tmp_path):
    """``accelerate(datastore=)`` with a sharded rest store: ``auto`` gains a ``rest`` source, whose drafts
    the target accepts on a corpus of its own continuations, and the output stays ``model.generate``'s."""
    import torch

    import draftless
    from draftless.hf.loading import load_model, load_tokenizer

    model, _ = load_model(str(tiny_folder))
    tok = load_tokenizer(str(tiny_folder))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, 48, 6).tolist() for _ in range(6)]
    outputs = [model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0].tolist() for p in prompts]
    corpus = tmp_path / "own.jsonl"
    corpus.write_text("".join(json.dumps({"text": tok.decode(o[3:])}) + "\n" for o in outputs))
    store = build_sharded_store([corpus], tok, tmp_path / "s", shards=3, progress=False, verbose=False,
                                batch_chars=200).out_dir
    fast = draftless.accelerate(model, "auto", tokenizer=tok, datastore=str(store), history=None)
    rest_accepted = 0
    for prompt, expected in zip(prompts, outputs):
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
        assert got.sequences[0].tolist() == expected
        rest_accepted += sum(v.accepted for k, v in got.stats.per_source.items() if k.startswith("rest"))
    assert rest_accepted > 0
    with pytest.raises(DatastoreError, match="not a datastore"):
        draftless.accelerate(model, "auto", tokenizer=tok, datastore=str(tmp_path))
