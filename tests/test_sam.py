"""SuffixAutomaton against a brute-force oracle, in every mode (batch build, online extension, frozen, loaded)."""
from __future__ import annotations

import tempfile
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.engine.tree import DraftTree
from draftless.index.suffix_automaton import SuffixAutomaton
from draftless.stores.indexes import load_index, save_index

# Small alphabets make states share prefixes and hash tables collide; the large ids exercise a 262k vocabulary.
ALPHABET = [0, 1, 2, 3, 262000, 262143]
texts = st.lists(st.sampled_from(ALPHABET), min_size=0, max_size=40)
small_texts = st.lists(st.integers(0, 2), min_size=1, max_size=40)
SETTINGS = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------------------------------ oracle
def substring_counts(text: list[int]) -> Counter:
    """Every non-empty substring (as a tuple) -> number of occurrences, overlaps included."""
    counts: Counter = Counter()
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            counts[tuple(text[i:j])] += 1
    return counts


def longest_suffix_matches(text: list[int], query: list[int], subs: Counter) -> list[int]:
    """After each query token: the length of the longest suffix of the query so far that occurs in ``text``."""
    out = []
    for k in range(1, len(query) + 1):
        best = 0
        for length in range(1, k + 1):
            if tuple(query[k - length:k]) in subs:
                best = length
        out.append(best)
    return out


def all_modes(text: list[int]):
    """The automaton of ``text`` built every way we support, each labelled."""
    batch = SuffixAutomaton.build(text)
    online = SuffixAutomaton(capacity=16)  # small: forces the kernels to grow states and pool
    rng = np.random.default_rng(len(text))
    i = 0
    while i < len(text):  # extension in random chunk sizes, one token at a time included
        k = int(rng.integers(1, 4))
        online.extend(text[i:i + k] if k > 1 else text[i])
        i += k
    half = len(text) // 2
    mixed = SuffixAutomaton.build(text[:half])  # batch counts, then online counts on top
    mixed.extend(text[half:])
    frozen = SuffixAutomaton.build(text).freeze()
    yield "batch", batch
    yield "online", online
    yield "mixed", mixed
    yield "frozen", frozen
    with tempfile.TemporaryDirectory() as tmp:
        save_index(online, tmp + "/store")
        yield "loaded", load_index(SuffixAutomaton, tmp + "/store")


# ------------------------------------------------------------------------------------------ properties
@SETTINGS
@given(text=texts, probes=st.lists(st.lists(st.sampled_from(ALPHABET + [7]), min_size=1, max_size=6), max_size=20))
def test_substrings_accepted_and_counted_others_rejected(text, probes):
    subs = substring_counts(text)
    for mode, sam in all_modes(text):
        assert sam.n_tokens == len(text), mode
        assert sam.n_states <= max(2 * len(text), 1), mode
        for pattern, count in subs.items():
            state = sam.find(pattern)
            assert state > 0, (mode, pattern)
            assert sam.count(state) == count, (mode, pattern)
            # end_position points at an occurrence, and the longest string of the state has at least len(pattern)
            end = sam.end_position(state)
            assert tuple(text[end - len(pattern) + 1:end + 1]) == pattern, (mode, pattern)
            assert sam.length(state) >= len(pattern), mode
        for pattern in probes:
            expected = subs.get(tuple(pattern), 0)
            assert sam.occurrences(pattern) == expected, (mode, pattern)
            assert (pattern in sam) == (expected > 0), (mode, pattern)
        assert sam.occurrences([]) == len(text) + 1


@SETTINGS
@given(text=small_texts, query=st.lists(st.integers(0, 3), max_size=30))
def test_longest_suffix_match_lengths(text, query):
    subs = substring_counts(text)
    expected = longest_suffix_matches(text, query, subs)
    for mode, sam in all_modes(text):
        _, _, lengths = sam.match(query, return_lengths=True)
        assert lengths.tolist() == expected, mode
        # Step-by-step and chunked feeding agree with one call
        state, length = 0, 0
        for token, want in zip(query, expected):
            state, length = sam.step(state, length, token)
            assert length == want, mode
        s1, l1 = sam.match(query[: len(query) // 2])
        assert sam.match(query[len(query) // 2:], s1, l1)[1] == (expected[-1] if expected else 0), mode


@SETTINGS
@given(text=texts)
def test_next_tokens_and_continuations(text):
    subs = substring_counts(text)
    for mode, sam in all_modes(text):
        for pattern in list(subs)[:60]:
            state = sam.find(pattern)
            toks, counts = sam.next_tokens(state)
            expected = {c: subs[pattern + (c,)] for c in set(ALPHABET) if pattern + (c,) in subs}
            assert dict(zip(toks.tolist(), counts.tolist())) == expected, (mode, pattern)
            assert list(counts) == sorted(counts, reverse=True), mode
            cont = sam.continuations(state, 5)
            end = sam.end_position(state)
            assert cont.tolist() == text[end + 1:end + 6], mode


@SETTINGS
@given(text=small_texts)
def test_longest_repeated_suffix(text):
    subs_before = substring_counts(text[:-1])
    best = 0
    for length in range(1, len(text)):
        if tuple(text[len(text) - length:]) in subs_before:
            best = length
    for sam in (SuffixAutomaton.build(text), dict(all_modes(text))["online"]):
        state, length = sam.longest_repeated_suffix()
        assert length == best
        if best:
            # its first occurrence ends before the last token, so it has a continuation to draft from
            assert sam.end_position(state) < len(text) - 1


@SETTINGS
@given(text=small_texts, budget=st.integers(1, 12), top_k=st.integers(1, 3))
def test_draft_tree_is_valid_and_layout_independent(text, budget, top_k):
    growable = SuffixAutomaton.build(text)
    state, length = growable.longest_repeated_suffix()
    if length == 0:
        return
    frozen = growable.copy().freeze()
    a = growable.draft_tree(state, length, budget, max_depth=5, top_k=top_k)
    b = frozen.draft_tree(state, length, budget, max_depth=5, top_k=top_k)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    tokens, parents, scores = a
    assert len(tokens) <= budget
    tree = DraftTree(tokens=np.concatenate([[text[-1]], tokens[1:]]), parents=parents, scores=scores,
                     source_mask=np.zeros(len(tokens), np.uint32))
    tree.validate()
    assert ((scores > 0) & (scores <= 1)).all()
    assert (scores[1:] <= scores[parents[1:]] + 1e-7).all()
    # every root-to-node path is text that followed the matched suffix somewhere
    suffix = tuple(text[len(text) - length:])
    subs = substring_counts(text)
    for path in tree.token_paths():
        assert suffix + tuple(path) in subs


SEP = 9  # a separator id outside ``small_texts``' alphabet


@SETTINGS
@given(docs=st.lists(small_texts, min_size=1, max_size=4), query=small_texts, min_length=st.integers(1, 3))
def test_draft_backing_off_drafts_from_the_longest_suffix_with_a_continuation(docs, query, min_length):
    """Oracle: the backed-off draft comes from the longest suffix of the query (at least ``min_length`` tokens, at
    most three suffix-link steps from the longest match) that is followed in the text by something other than the
    separator; its first tokens are continuations of that suffix, never the separator; None when no such suffix."""
    text = [t for doc in docs for t in doc + [SEP]]
    sam = SuffixAutomaton.build(text)
    state, length = sam.match(np.asarray(query, dtype=np.int32))
    got = sam.draft_tree_backing_off(state, length, min_length, 8, lambda n: 4, skip_token=SEP)
    tried = []  # the match lengths the method may try: the longest match and its suffix links, three at most
    s, n = state, length
    for _ in range(3):
        if n < min_length:
            break
        tried.append((s, n))
        s = sam.link(s)
        n = sam.length(s)

    def followers(n):
        suffix = tuple(query[len(query) - n:]) if n else ()
        return {text[i + n] for i in range(len(text) - n) if tuple(text[i:i + n]) == suffix} - {SEP}

    usable = [n for _, n in tried if followers(n)]
    if not usable:
        assert got is None
        return
    tokens, parents, _ = got
    first = {int(t) for t, p in zip(tokens[1:], parents[1:]) if p == 0}
    assert first and first <= followers(usable[0]) and SEP not in tokens


def test_large_vocabulary_root_and_growth():
    rng = np.random.default_rng(0)
    text = rng.integers(0, 262144, size=3000).astype(np.int32)
    text[1000:1100] = text[:100]  # a long repeat among random tokens
    sam = SuffixAutomaton(capacity=16)
    for chunk in np.array_split(text, 37):
        sam.extend(chunk)
    batch = SuffixAutomaton.build(text)
    frozen = batch.copy().freeze(vocab_size=262144)
    for a in (sam, batch, frozen):
        assert a.occurrences(text[:100]) == 2
        assert a.occurrences(text[1:101]) == 1 + (text[100] == text[1100])
        assert a.match(text[1000:1100])[1] == 100
        assert a.next_tokens(0)[0].size == len(np.unique(text))


def test_frozen_refuses_extend_and_negative_tokens():
    sam = SuffixAutomaton.build([1, 2, 3]).freeze()
    with pytest.raises(ValueError):
        sam.extend(4)
    with pytest.raises(ValueError):
        SuffixAutomaton.build([1, -2])
    assert sam.find([-1]) == -1
    assert sam.step(0, 0, -5) == (0, 0)
