"""Token Recycling drafter: the update against a dict oracle, drafting against brute-force path enumeration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.drafters.recycle import RecycleDrafter
from draftless.engine.protocol import Drafter, StepFeedback
from draftless.engine.tree import DraftTree

SEEDS = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------------------------- helpers / oracles
def random_tree(rng: np.random.Generator, vocab: int, n_paths: int, max_len: int) -> DraftTree:
    root = int(rng.integers(vocab))
    paths = [rng.integers(0, vocab, size=int(rng.integers(1, max_len + 1))).tolist() for _ in range(n_paths)]
    return DraftTree.from_paths(root, paths, source="test")


def random_step(rng: np.random.Generator, vocab: int) -> StepFeedback:
    tree = random_tree(rng, vocab, n_paths=int(rng.integers(1, 5)), max_len=4)
    accepted = np.asarray(tree.path_to(int(rng.integers(len(tree)))), dtype=np.int64)
    logits = torch.from_numpy(rng.normal(size=(len(tree), vocab)).astype(np.float32) * 3)
    return StepFeedback(
        tree=tree,
        accepted=accepted,
        new_tokens=tree.tokens[accepted[1:]],
        context=np.concatenate([[1, 2, 3], tree.tokens[accepted]]),
        logits=logits,
    )


def oracle_update(table: dict, tokens, logits: np.ndarray, order, k: int) -> None:
    """Row ``tokens[i]`` := (top-k ids, their softmax probabilities) for ``i`` in ``order``; later writes win."""
    for i in order:
        row = logits[i].astype(np.float64)
        p = np.exp(row - row.max())
        p /= p.sum()
        ids = np.argsort(-row, kind="stable")[:k]
        table[int(tokens[i])] = (ids, p[ids])


def assert_table_matches(drafter: RecycleDrafter, table: dict) -> None:
    for t in range(drafter.vocab_size):
        if t in table:
            ids, probs = table[t]
            np.testing.assert_array_equal(drafter.next_tokens[t, : len(ids)], ids)
            np.testing.assert_array_equal(drafter.next_tokens[t, len(ids):], -1)
            np.testing.assert_allclose(drafter.next_probs[t, : len(ids)], probs, rtol=1e-5, atol=1e-7)
        else:
            assert (drafter.next_tokens[t] == -1).all(), t
            assert (drafter.next_probs[t] == 0).all(), t


def random_table(rng: np.random.Generator, vocab: int, k: int, unknown: float = 0.2, ties: bool = False):
    """Rows of distinct tokens with descending probabilities (like top-k output); some rows unknown."""
    tokens = np.empty((vocab, k), dtype=np.int32)
    for t in range(vocab):
        tokens[t] = rng.choice(vocab, size=k, replace=False)
    if ties:  # coarse probabilities: many equal products
        probs = rng.choice([0.5, 0.25, 0.125], size=(vocab, k))
    else:
        probs = rng.dirichlet(np.full(k + 1, 0.5), size=vocab)[:, :k]
    probs = -np.sort(-probs, axis=1)
    probs = probs.astype(np.float32)
    gone = rng.random(vocab) < unknown
    tokens[gone] = -1
    probs[gone] = 0
    return tokens, probs


def brute_force_scores(tokens: np.ndarray, probs: np.ndarray, root: int, max_depth: int) -> list[float]:
    """Cumulative scores of every path of 1..max_depth edges from ``root`` (products in root-to-leaf order)."""
    out = []

    def walk(token: int, score: float, depth: int) -> None:
        if depth == max_depth:
            return
        for child, p in zip(tokens[token].tolist(), probs[token].tolist()):
            if child < 0:
                continue
            s = score * p
            out.append(s)
            walk(child, s, depth + 1)

    walk(root, 1.0, 0)
    return out


# ---------------------------------------------------------------------------------------------- the update
def test_is_a_drafter():
    d = RecycleDrafter(vocab_size=10, k=3)
    assert isinstance(d, Drafter)
    assert d.name == "recycle"


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, prefer_accepted=st.booleans())
def test_feedback_matches_dict_oracle(seed, prefer_accepted):
    rng = np.random.default_rng(seed)
    vocab, k = 12, 4  # a small vocabulary: tokens repeat across nodes and steps, so overwrites happen
    drafter = RecycleDrafter(vocab, k=k, prefer_accepted=prefer_accepted)
    table: dict = {}
    for _ in range(4):
        step = random_step(rng, vocab)
        n = len(step.tree)
        if prefer_accepted:
            rest = [i for i in range(n) if i not in set(step.accepted.tolist())]
            order = rest + step.accepted.tolist()
        else:
            order = list(range(n))
        oracle_update(table, step.tree.tokens, step.logits.numpy(), order, k)
        drafter.feedback(step)
        assert_table_matches(drafter, table)


def best_after(step: StepFeedback, token: int, vocab: int, **kwargs) -> int:
    """The first choice a fresh ``RecycleDrafter(vocab, k=2, **kwargs)`` records after ``token`` from ``step``."""
    d = RecycleDrafter(vocab, k=2, **kwargs)
    d.feedback(step)
    return int(d.next_tokens[token, 0])


def test_feedback_accepted_rows_win_over_rejected():
    vocab = 6
    # node 1 (rejected) and node 2 (accepted) both carry token 4; the accepted node's view must win
    tree = DraftTree.from_paths(0, [[4], [5, 4]], source="test")
    assert tree.tokens.tolist() == [0, 4, 5, 4]
    logits = torch.zeros(4, vocab)
    logits[1, 1] = 10.0  # rejected node 1 says "1 follows 4"
    logits[3, 2] = 10.0  # accepted node 3 says "2 follows 4"
    step = StepFeedback(tree, np.array([0, 2, 3]), np.array([5, 4]), np.array([0, 5, 4]), logits)
    assert best_after(step, 4, vocab) == 2
    assert best_after(step, 4, vocab, prefer_accepted=False) == 2  # node order: node 3 is later anyway
    step.accepted = np.array([0, 1])
    assert best_after(step, 4, vocab) == 1
    # Discriminating case: the accepted node holding token 4 (node 2) comes *before* the rejected one (node 3) in
    # node order, so only the accepted-last ordering makes the accepted view win.
    tree = DraftTree.from_paths(0, [[5, 4], [4]], source="test")
    assert tree.tokens.tolist() == [0, 5, 4, 4] and tree.parents.tolist() == [-1, 0, 1, 0]
    logits = torch.zeros(4, vocab)
    logits[2, 2] = 10.0  # accepted node 2 says "2 follows 4"
    logits[3, 1] = 10.0  # rejected node 3 says "1 follows 4"
    step = StepFeedback(tree, np.array([0, 1, 2]), np.array([5, 4]), np.array([0, 5, 4]), logits)
    assert best_after(step, 4, vocab) == 2
    assert best_after(step, 4, vocab, prefer_accepted=False) == 1


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, chunk=st.integers(1, 8))
def test_seed_matches_dict_oracle(seed, chunk):
    rng = np.random.default_rng(seed)
    vocab, k = 15, 3
    ids = rng.integers(0, vocab, size=int(rng.integers(1, 30)))
    logits = rng.normal(size=(1, len(ids), vocab)).astype(np.float32)
    drafter = RecycleDrafter(vocab, k=k)
    drafter.seed(ids, torch.from_numpy(logits), chunk=chunk)
    table: dict = {}
    oracle_update(table, ids, logits[0], range(len(ids)), k)
    assert_table_matches(drafter, table)


def test_update_bf16_logits_and_short_vocab():
    vocab, k = 3, 5  # k larger than the vocabulary: rows hold 3 entries then -1
    d = RecycleDrafter(vocab, k=k)
    logits = torch.tensor([[0.0, 2.0, 1.0]], dtype=torch.bfloat16)
    d.seed(np.array([0]), logits)
    assert d.next_tokens[0].tolist() == [1, 2, 0, -1, -1]
    np.testing.assert_allclose(d.next_probs[0, :3].sum(), 1.0, rtol=1e-5)
    # p(1), p(2), p(0) = .67, .24, .09 after token 0; the grandchild 0 -> 0 -> 1 scores .09 * .67 < .09
    tree = d.draft(np.array([0]), budget=4)
    tree.validate()
    assert tree.tokens.tolist() == [0, 1, 2, 0]
    big = d.draft(np.array([0]), budget=10)  # token 0's row is known: the tree keeps growing below it
    big.validate()
    assert len(big) == 10


def test_update_rejects_wider_logits_and_wrong_rows():
    d = RecycleDrafter(5, k=2)
    with pytest.raises(ValueError, match="vocab_size=5"):
        d.seed(np.array([0, 1]), torch.zeros(2, 7))
    with pytest.raises(ValueError):
        d.seed(np.array([0, 1, 2]), torch.zeros(2, 5))
    tree = DraftTree.from_paths(0, [[1, 2]], source="test")
    with pytest.raises(ValueError, match="every verified node"):
        d.feedback(StepFeedback(tree, np.array([0]), np.array([1]), np.array([0, 1]), torch.zeros(1, 5)))


def test_feedback_then_draft_follows_the_model():
    vocab = 10
    chain = [1, 2, 3, 4]
    tree = DraftTree.from_chain(chain[0], chain[1:], source="test")
    logits = torch.full((4, vocab), -5.0)
    for i, nxt in enumerate([2, 3, 4, 5]):
        logits[i, nxt] = 5.0
    d = RecycleDrafter(vocab, k=3)
    d.feedback(StepFeedback(tree, np.array([0, 1]), np.array([2, 7]), np.array([1, 2, 7]), logits))
    draft = d.draft(np.array([9, 1]), budget=5)
    draft.validate()
    assert draft.tokens.tolist() == [1, 2, 3, 4, 5]
    assert (np.diff(draft.scores) <= 0).all()
    assert draft.source_names == ("recycle",)
    assert draft.source_mask.tolist() == [0, 1, 1, 1, 1]


# ---------------------------------------------------------------------------------------------- drafting
def test_unknown_root_and_tiny_budget_give_root_only():
    d = RecycleDrafter(8, k=2)
    t = d.draft(np.array([3, 5]), budget=32)
    assert len(t) == 1 and t.root_token == 5
    d.next_tokens[5] = [1, 2]
    d.next_probs[5] = [0.5, 0.25]
    assert len(d.draft(np.array([5]), budget=1)) == 1
    assert len(d.draft(np.array([5]), budget=2)) == 2
    assert len(d.draft(np.array([100]), budget=8)) == 1  # out-of-vocabulary root: no guess, no crash


@settings(max_examples=60, deadline=None)
@given(
    seed=SEEDS,
    budget=st.integers(1, 40),
    max_depth=st.integers(1, 4),
    ties=st.booleans(),
)
def test_best_first_matches_brute_force(seed, budget, max_depth, ties):
    rng = np.random.default_rng(seed)
    vocab, k = 9, 3
    tokens, probs = random_table(rng, vocab, k, ties=ties)
    d = RecycleDrafter(vocab, k=k, max_depth=max_depth)
    d.next_tokens[:], d.next_probs[:] = tokens, probs
    root = int(rng.integers(vocab))
    tree = d.draft(np.array([0, root]), budget=budget)
    tree.validate()
    assert tree.root_token == root
    assert len(tree) <= budget
    assert tree.max_depth <= max_depth

    # every node is a real row entry of its parent, scored by the product of recorded probabilities on its path
    for i in range(1, len(tree)):
        parent_token = int(tree.tokens[tree.parents[i]])
        row = tokens[parent_token].tolist()
        assert int(tree.tokens[i]) in row
        p = float(probs[parent_token][row.index(int(tree.tokens[i]))])
        expected = 1.0 if tree.parents[i] == 0 else None
        path = tree.path_to(i)
        s = 1.0
        for a, b in zip(path[:-1], path[1:]):
            r = tokens[int(tree.tokens[a])].tolist()
            s *= float(probs[int(tree.tokens[a])][r.index(int(tree.tokens[b]))])
        assert np.float32(s) == tree.scores[i]
        if expected is not None:
            assert np.float32(p) == tree.scores[i]
        assert tree.scores[i] <= tree.scores[tree.parents[i]]

    # best-first = the top (budget - 1) of all paths by score. With ties the chosen *nodes* may differ, but the
    # multiset of chosen scores may not.
    all_scores = brute_force_scores(tokens, probs, root, max_depth)
    want = sorted(all_scores, reverse=True)[: budget - 1]
    got = sorted(tree.scores[1:].astype(np.float64).tolist(), reverse=True)
    assert len(got) == len(want)
    np.testing.assert_array_equal(np.float32(got), np.float32(want))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, min_score=st.floats(0.0, 0.6))
def test_min_score_cuts_low_nodes(seed, min_score):
    rng = np.random.default_rng(seed)
    vocab, k = 9, 3
    tokens, probs = random_table(rng, vocab, k, unknown=0.0)
    d = RecycleDrafter(vocab, k=k, max_depth=3, min_score=min_score)
    d.next_tokens[:], d.next_probs[:] = tokens, probs
    tree = d.draft(np.array([2]), budget=64)
    tree.validate()
    all_scores = brute_force_scores(tokens, probs, 2, 3)
    assert len(tree) - 1 == sum(s >= min_score for s in all_scores)
    assert (tree.scores[1:] >= np.float32(min_score)).all()


def test_persist_keeps_table_across_requests():
    d = RecycleDrafter(8, k=2)
    d.seed(np.array([1]), torch.tensor([[0.0, 0, 5, 0, 0, 0, 0, 0]]))
    d.begin(np.array([1, 2, 3]))
    assert d.next_tokens[1, 0] == 2 and d.known_rows == 1
    fresh = RecycleDrafter(8, k=2, persist=False)
    fresh.seed(np.array([1]), torch.tensor([[0.0, 0, 5, 0, 0, 0, 0, 0]]))
    fresh.begin(np.array([1, 2, 3]))
    assert fresh.known_rows == 0


# ---------------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tokens, probs = random_table(rng, 50, 4)
    d = RecycleDrafter(50, k=4)
    d.next_tokens[:], d.next_probs[:] = tokens, probs
    path = tmp_path / "sub" / "table.recycle"  # no .npz suffix: the name is used as given
    d.save(path)
    assert path.exists() and list(path.parent.iterdir()) == [path]
    e = RecycleDrafter(50, k=4)
    e.load(path)
    np.testing.assert_array_equal(e.next_tokens, tokens)
    np.testing.assert_array_equal(e.next_probs, probs)
    ctx = np.array([int(np.flatnonzero(tokens[:, 0] >= 0)[0])])
    a, b = d.draft(ctx, 16), e.draft(ctx, 16)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.parents, b.parents)
    np.testing.assert_array_equal(a.scores, b.scores)
    # float16 storage loads a float32 table too
    h = RecycleDrafter(50, k=4, prob_dtype=np.float16)
    h.load(path)
    assert h.next_probs.dtype == np.float16


def test_load_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "t.npz"
    RecycleDrafter(50, k=4).save(path)
    with pytest.raises(ValueError, match="vocab_size=50, k=4.*vocab_size=51, k=4"):
        RecycleDrafter(51, k=4).load(path)
    with pytest.raises(ValueError, match="k=4.*k=8"):
        RecycleDrafter(50, k=8).load(path)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a recycle table"):
        RecycleDrafter(50, k=4).load(other)


# ---------------------------------------------------------------------------------------------- a full-size table
def test_draft_fills_the_budget_and_feedback_rewrites_rows_on_a_full_vocabulary_table():
    rng = np.random.default_rng(0)
    vocab, k = 49152, 8
    d = RecycleDrafter(vocab, k=k)
    base = rng.integers(0, vocab, size=vocab)
    d.next_tokens[:] = (base[:, None] + np.arange(k) * 7919) % vocab  # distinct within each row
    d.next_probs[:] = -np.sort(-rng.dirichlet(np.full(k + 1, 0.3), size=vocab)[:, :k], axis=1)
    roots = rng.integers(0, vocab, size=2000)

    for budget in (16, 32, 64):
        tree = d.draft(np.array([roots[0]]), budget)
        assert len(tree) == budget

    tree = d.draft(np.array([roots[0]]), 32)
    logits = torch.randn(len(tree), vocab)
    step = StepFeedback(tree, np.array([0, 1]), tree.tokens[1:2], np.array([1, 2]), logits)
    d.feedback(step)
    # the accepted node's row is written last, so it holds that node's top-k whatever other nodes share its token
    np.testing.assert_array_equal(d.next_tokens[tree.tokens[1]], torch.topk(logits[1], k).indices.numpy())
