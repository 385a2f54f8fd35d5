"""SamDrafter: tree shape, drafting repeated text, incremental == from scratch, static stores and their refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CharTokenizer, assert_common_store_refusals, best_path, check_tree
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.drafters.sam import SamDrafter
from draftless.engine.protocol import StepFeedback
from draftless.engine.tree import DraftTree
from draftless.stores.build import build_store
from draftless.stores.datastore import DatastoreError

DOCS = ["def add(a, b):\n    return a + b\n", "def mul(a, b):\n    return a * b\n", "the quick brown fox jumps"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return build_store("sam", [root / "docs.jsonl"], CharTokenizer(), root / "store", progress=False,
                       verbose=False).out_dir


def same_tree(a: DraftTree, b: DraftTree) -> bool:
    return (np.array_equal(a.tokens, b.tokens) and np.array_equal(a.parents, b.parents)
            and np.allclose(a.scores, b.scores))


def feedback(context: np.ndarray, new: np.ndarray, tree: DraftTree) -> StepFeedback:
    return StepFeedback(tree=tree, accepted=np.zeros(1, np.int64), new_tokens=new, context=context, logits=None)


# ------------------------------------------------------------------------------------------ dynamic
@settings(max_examples=40, deadline=None)
@given(context=st.lists(st.integers(0, 4), min_size=1, max_size=60), budget=st.integers(1, 20))
def test_tree_root_is_last_context_token(context, budget):
    drafter = SamDrafter()
    ctx = np.asarray(context, dtype=np.int64)
    drafter.begin(ctx[: max(1, len(ctx) // 2)])
    check_tree(drafter.draft(ctx, budget), ctx, budget)


def test_drafts_the_true_continuation_of_repeated_text():
    pattern = list(range(10, 40))
    text = np.asarray(pattern * 3, dtype=np.int64)
    drafter = SamDrafter()
    drafter.begin(text[:40])
    for cut in (40, 47, 65, 71):
        ctx = text[:cut]
        tree = drafter.draft(ctx, 32)
        check_tree(tree, ctx, 32)
        path = best_path(tree)
        assert len(path) >= 8
        assert path == (pattern * 5)[cut:cut + len(path)]  # the text goes on repeating past its end


def test_no_draft_without_a_repeat():
    drafter = SamDrafter()
    ctx = np.arange(50, dtype=np.int64)
    drafter.begin(ctx)
    assert len(drafter.draft(ctx, 16)) == 1
    # a single repeated token is shorter than min_match=2
    ctx = np.array([1, 2, 3, 4, 2, 5, 6, 2], dtype=np.int64)
    drafter.begin(ctx)
    assert len(drafter.draft(ctx, 16)) == 1


@settings(max_examples=25, deadline=None)
@given(tokens=st.lists(st.integers(0, 3), min_size=8, max_size=80), chunks=st.lists(st.integers(1, 5), min_size=1),
       use_store=st.booleans())
def test_incremental_equals_from_scratch(store, tokens, chunks, use_store):
    seq = np.asarray(tokens, dtype=np.int64) + 67  # shift into the store's character range ('a'.. region)
    path = store if use_store else None
    tok = CharTokenizer()
    with_feedback = SamDrafter(path, tok)
    draft_only = SamDrafter(path, tok)  # never told feedback: catches up from the context in draft()
    start = 4
    with_feedback.begin(seq[:start])
    draft_only.begin(seq[:start])
    cut, i = start, 0
    while cut < len(seq):
        ctx = seq[:cut]
        a = with_feedback.draft(ctx, 12)
        b = draft_only.draft(ctx, 12)
        fresh = SamDrafter(path, tok)
        fresh.begin(ctx)
        c = fresh.draft(ctx, 12)
        assert same_tree(a, c) and same_tree(b, c)
        new = seq[cut:cut + chunks[i % len(chunks)]]
        i += 1
        cut += len(new)
        with_feedback.feedback(feedback(seq[:cut], new, a))


def test_unrelated_context_restarts():
    drafter = SamDrafter()
    a = np.array([5, 6, 7, 5, 6, 7, 5, 6], dtype=np.int64)
    drafter.begin(a[:4])
    drafter.draft(a, 8)
    b = np.array([1, 2, 3, 1, 2], dtype=np.int64)  # a new request without begin()
    fresh = SamDrafter()
    fresh.begin(b)
    assert same_tree(drafter.draft(b, 8), fresh.draft(b, 8))
    assert best_path(drafter.draft(b, 8))[:1] == [3]


# ------------------------------------------------------------------------------------------ static store
def test_static_store_drafts_corpus_continuation_and_stops_at_separator(store):
    tok = CharTokenizer()
    drafter = SamDrafter(store, tok, use_dynamic=False)
    ctx = np.asarray(tok.ids("x = 1\ndef add(a, b):\n    ret"), dtype=np.int64)
    drafter.begin(ctx[:5])
    tree = drafter.draft(ctx, 16)
    check_tree(tree, ctx, 16)
    assert best_path(tree)[:6] == tok.ids("urn a ")
    ctx = np.asarray(tok.ids("the quick brown fox jum"), dtype=np.int64)
    drafter.begin(ctx)
    tree = drafter.draft(ctx, 16)
    assert best_path(tree) == tok.ids("ps")  # the document ends: no separator, nothing from the next document
    assert 0 not in tree.tokens[1:].tolist()


def test_store_nodes_carry_their_own_source_name(store):
    """The calibrator tells corpus continuations from context continuations by source name."""
    tok = CharTokenizer()
    drafter = SamDrafter(store, tok, static_policy="fuse")
    # "def add(a, b):" repeats in the context (dynamic) and in the corpus (static), "\n    re" only in the corpus
    ctx = np.asarray(tok.ids("def add(a, b): x\ndef add(a, b):\n    re"), dtype=np.int64)
    drafter.begin(ctx)
    tree = drafter.draft(ctx, 16)
    assert set(tree.source_names) == {f"sam:{store.name}"}
    ctx = np.asarray(tok.ids("def add(a, b):\n    ret x def add(a, b):\n    ret"), dtype=np.int64)
    drafter.begin(ctx)
    tree = drafter.draft(ctx, 32)
    assert set(tree.source_names) == {"sam", f"sam:{store.name}"}
    assert {name for i in range(1, len(tree)) for name in tree.sources_of(i)} == {"sam", f"sam:{store.name}"}


def test_longer_policy_drafts_the_store_only_beyond_the_context_match(store):
    tok = CharTokenizer()
    drafter = SamDrafter(store, tok, static_policy="longer")
    # the context repeats a longer suffix than the corpus holds: only the dynamic tree
    text = "zq the quick brown fox jumps zq the quick brown fox jum"
    ctx = np.asarray(tok.ids(text), dtype=np.int64)
    drafter.begin(ctx)
    assert drafter.draft(ctx, 16).source_names == ("sam",)
    # the corpus holds a longer match than the context: the store's tree joins
    ctx = np.asarray(tok.ids("add(a x def add(a, b):\n    re"), dtype=np.int64)
    drafter.begin(ctx)
    assert f"sam:{store.name}" in drafter.draft(ctx, 16).source_names
    with pytest.raises(ValueError, match="static_policy"):
        SamDrafter(store, tok, static_policy="sometimes")


def test_fallback_policy_drafts_the_store_only_without_a_context_match(store):
    tok = CharTokenizer()
    drafter = SamDrafter(store, tok, static_policy="fallback")
    # the context repeats its own suffix: only the context's tree, though the corpus matches too
    ctx = np.asarray(tok.ids("b):\n    re x def add(a, b):\n    re"), dtype=np.int64)
    drafter.begin(ctx)
    assert drafter.draft(ctx, 16).source_names == ("sam",)
    ctx = np.asarray(tok.ids("xyz def add(a, b):\n    re"), dtype=np.int64)  # nothing repeats in the context
    drafter.begin(ctx)
    assert drafter.draft(ctx, 16).source_names == (f"sam:{store.name}",)


def test_store_refusals(store, tmp_path):
    with pytest.raises(DatastoreError) as err:
        SamDrafter(store, CharTokenizer("other-model", shift=3))
    assert "'chars'" in str(err.value) and "'other-model'" in str(err.value)

    def open_store(path, tokenizer=None, verify="size"):
        return SamDrafter(path, CharTokenizer() if tokenizer is None else tokenizer, verify=verify)

    assert_common_store_refusals(open_store, store, tmp_path, "sam", "edge_to.npy",
                                 CharTokenizer("other-model", shift=3), corrupt_file="states.npy")
    with pytest.raises(DatastoreError, match="not found"):
        SamDrafter(tmp_path / "missing")
