"""Suffix arrays (construction and lookups against brute force), the ``rest`` store and RestDrafter."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import CharTokenizer, assert_common_store_refusals, best_path, check_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.drafters.rest import RestDrafter
from draftless.index.suffix_array import (
    SA_METHODS,
    SuffixArray,
    brute_force_suffix_array,
    build_suffix_array,
    symbol_map,
)
from draftless.stores.build import build_store
from draftless.stores.datastore import DatastoreError, write_store
from draftless.stores.indexes import load_index, save_index
from draftless.tokenizer_identity import tokenizer_identity

DOCS = ["def add(a, b):\n    return a + b\n", "def mul(a, b):\n    return a * b\n", "the quick brown fox jumps",
        "the quick brown cat sleeps"]

token_lists = st.one_of(
    st.lists(st.integers(0, 3), max_size=80),  # tiny alphabet: long repeats, many rounds
    st.lists(st.integers(0, 300_000), max_size=40),  # large vocab: 3 tokens per packed key
    st.lists(st.integers(0, 5), min_size=1, max_size=12).map(lambda t: t * 7),  # periodic text
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("rest")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return build_store("rest", [root / "docs.jsonl"], CharTokenizer(), root / "store", progress=False,
                       verbose=False).out_dir


def brute_positions(tokens: list[int], pattern: list[int]) -> list[int]:
    m = len(pattern)
    return [i for i in range(len(tokens) - m + 1) if tokens[i: i + m] == pattern]


# ------------------------------------------------------------------------------------------ construction + lookup
@settings(max_examples=150, deadline=None)
@given(token_lists)
def test_suffix_array_equals_brute_force(tokens):
    arr = np.asarray(tokens, dtype=np.int32)
    sa = build_suffix_array(arr)
    assert sa.dtype == np.int32
    assert np.array_equal(sa, brute_force_suffix_array(arr))


wide_alphabets = st.lists(st.integers(0, 2**31 - 2), min_size=257, max_size=300, unique=True).flatmap(
    lambda ids: st.lists(st.sampled_from(ids), min_size=0, max_size=200).map(lambda extra: ids + extra))


@pytest.mark.parametrize("method", SA_METHODS)
@settings(max_examples=60, deadline=None)
@given(tokens=st.one_of(token_lists, wide_alphabets), separator=st.one_of(st.none(), st.integers(0, 3)))
def test_every_builder_equals_brute_force(method, tokens, separator):
    """Both builders, plain and separator-first (the separator below every id), over small and wide alphabets (more
    than 256 distinct ids: 2 bytes a token for libdivsufsort)."""
    arr = np.asarray(tokens, dtype=np.int32)
    sa = build_suffix_array(arr, method=method, separator=separator)
    assert sa.dtype == np.int32
    assert np.array_equal(sa, brute_force_suffix_array(arr, separator=separator))


@pytest.mark.parametrize("top", [300_000, 2**31 - 2])
def test_builders_agree_on_three_byte_symbols(top):
    """More than 65,536 distinct ids (libdivsufsort sorts 3 bytes a token), from a 300k vocabulary and from ids
    spread up to the largest allowed (renumbered before the table by id)."""
    rng = np.random.default_rng(0)
    ids = rng.choice(top, 70_000, replace=False)
    tokens = np.concatenate([ids, rng.choice(ids, 30_000), ids[:500]]).astype(np.int32)
    if top < 2**20:
        assert symbol_map(tokens)[1] > 65_536
    for separator in (None, int(tokens[7])):
        assert np.array_equal(build_suffix_array(tokens, method="divsufsort", separator=separator),
                              build_suffix_array(tokens, method="doubling", separator=separator))


def test_doubling_is_the_fallback_without_pydivsufsort(monkeypatch):
    from draftless.index.suffix_array import default_sa_method

    assert default_sa_method() == "divsufsort"
    monkeypatch.setitem(__import__("sys").modules, "pydivsufsort", None)  # import fails
    assert default_sa_method() == "doubling"
    tokens = np.array([3, 1, 3, 1, 2, 0, 3, 1], dtype=np.int32)
    assert np.array_equal(build_suffix_array(tokens, separator=0), brute_force_suffix_array(tokens, separator=0))


def test_symbol_map_keeps_the_order_and_puts_the_separator_first():
    tokens = np.array([50, 7, 9, 7, 3], dtype=np.int32)
    symbol_of, n = symbol_map(tokens)
    assert n == 4 and symbol_of[[3, 7, 9, 50]].tolist() == [0, 1, 2, 3]
    symbol_of, n = symbol_map(tokens, separator=50)  # the largest id present
    assert n == 4 and symbol_of[[50, 3, 7, 9]].tolist() == [0, 1, 2, 3]
    symbol_of, n = symbol_map(tokens, separator=60)  # absent: still symbol 0
    assert n == 5 and symbol_of[[60, 3, 7, 9, 50]].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown suffix-array method"):
        build_suffix_array(tokens, method="quick")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.lists(st.integers(0, 3), min_size=1, max_size=5))
def test_find_range_matches_brute_force(tokens, pattern):
    sa = SuffixArray.build(tokens)
    lo, hi = sa.find(pattern)
    assert sorted(sa.sa[lo:hi].tolist()) == brute_positions(tokens, pattern)
    assert sorted(sa.positions(pattern).tolist()) == brute_positions(tokens, pattern)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.lists(st.integers(0, 3), min_size=1, max_size=20),
       st.integers(1, 6), st.integers(1, 8))
def test_longest_suffix_match_matches_brute_force(tokens, context, min_len, max_len):
    sa = SuffixArray.build(tokens)
    m, lo, hi = sa.longest_suffix_match(np.asarray(context), min_len, max_len)
    expected = 0
    for length in range(min(max_len, len(context)), min_len - 1, -1):
        if brute_positions(tokens, context[-length:]):
            expected = length
            break
    assert m == expected
    if m:
        assert sorted(sa.sa[lo:hi].tolist()) == brute_positions(tokens, context[-m:])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=80), st.lists(st.integers(0, 4), min_size=1, max_size=3),
       st.integers(1, 5))
def test_continuation_counts_are_exact(tokens, pattern, depth):
    sa = SuffixArray.build(tokens)
    tok, par, counts, depths = sa.continuation_counts(pattern, depth, stop_token=0)
    expected: Counter = Counter()
    occurrences = brute_positions(tokens, pattern)
    for p in occurrences:
        cont = []
        for t in tokens[p + len(pattern): p + len(pattern) + depth]:
            if t == 0:
                break
            cont.append(t)
            expected[tuple(cont)] += 1
    got = {}
    for i in range(1, len(tok)):
        path, node = [], i
        while node > 0:
            path.append(int(tok[node]))
            node = int(par[node])
        got[tuple(path[::-1])] = int(counts[i])
        assert depths[i] == len(path) and par[i] < i
    assert got == dict(expected)
    assert counts[0] == len(occurrences)


def test_occurrence_cap_samples_evenly():
    sa = SuffixArray.build([1, 2] * 100)
    lo, hi = sa.find([1])
    slots = SuffixArray.sample_slots(lo, hi, 10)
    assert len(slots) == 10 and slots[0] == lo and slots[-1] < hi and len(set(slots.tolist())) == 10
    assert len(sa.positions([1], limit=7)) == 7


# ------------------------------------------------------------------------------------------ store
def test_save_load_round_trip(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50, 500).astype(np.int32)
    built = SuffixArray.build(tokens)
    ident = tokenizer_identity(CharTokenizer())
    save_index(built, tmp_path / "s", ident, {"a": 1}, {"separator_id": 0})
    loaded = load_index(SuffixArray, tmp_path / "s", tokenizer_identity=ident, verify="full")
    assert np.array_equal(loaded.tokens, tokens) and np.array_equal(loaded.sa, built.sa)
    assert loaded.separator_id == 0 and loaded.store_meta["build_args"] == {"a": 1}
    assert loaded.find([int(tokens[3]), int(tokens[4])]) == built.find([int(tokens[3]), int(tokens[4])])


def test_store_refusals(store, tmp_path):
    def open_store(path, tokenizer=None, verify="size"):
        return RestDrafter(path, CharTokenizer() if tokenizer is None else tokenizer, verify=verify)

    assert_common_store_refusals(open_store, store, tmp_path, "rest", "sa.npy", CharTokenizer("other-model", shift=3))
    inconsistent = write_store(tmp_path / "bad", "rest", {"tokens": np.zeros(3, np.int32),
                                                          "sa": np.zeros(2, np.int32)}, None)
    with pytest.raises(DatastoreError, match="inconsistent"):
        RestDrafter(inconsistent)
    with pytest.raises(DatastoreError, match="not found"):
        RestDrafter(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ drafter
def test_drafts_corpus_continuation_and_never_the_separator(store):
    tok = CharTokenizer()
    drafter = RestDrafter(store, tok, max_depth=16)
    ctx = np.asarray(tok.ids("x = 1\ndef add(a, b):\n    ret"), dtype=np.int64)
    tree = drafter.draft(ctx, 16)
    check_tree(tree, ctx, 16)
    assert best_path(tree)[:6] == tok.ids("urn a ")
    assert drafter.last_match == 16
    ctx = np.asarray(tok.ids("a quick brown fox jum"), dtype=np.int64)
    tree = drafter.draft(ctx, 32)
    check_tree(tree, ctx, 32)
    assert best_path(tree) == tok.ids("ps")  # the document ends there
    assert 0 not in tree.tokens[1:].tolist()
    # "the quick brown " continues two ways: a branching tree, the two branches scored alike
    ctx = np.asarray(tok.ids("see the quick brown "), dtype=np.int64)
    tree = drafter.draft(ctx, 64)
    first = [int(tree.tokens[c]) for c in tree.children()[0]]
    assert sorted(first) == sorted(tok.ids("fc"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=40), st.integers(1, 20))
def test_trees_are_valid_for_any_context(store, context, budget):
    drafter = RestDrafter(store)
    tree = drafter.draft(np.asarray(context, dtype=np.int64), budget)
    check_tree(tree, context, max(budget, 1))


def test_unknown_context_is_root_only(store):
    drafter = RestDrafter(store)
    tree = drafter.draft(np.array([5, 200, 201], dtype=np.int64), 16)
    assert len(tree) == 1 and tree.root_token == 201
