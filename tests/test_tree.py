"""DraftTree operations against slow, obvious oracles."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.engine.tree import DraftTree, merge

paths_strategy = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=5), min_size=0, max_size=8)


def prefixes(paths):
    return {tuple(p[:k]) for p in paths for k in range(1, len(p) + 1)}


def node_prefixes(tree):
    return {tuple(int(tree.tokens[i]) for i in tree.path_to(n)[1:]) for n in range(1, len(tree))}


@given(paths_strategy)
def test_from_paths_is_the_trie_of_the_paths(paths):
    tree = DraftTree.from_paths(7, paths)
    tree.validate()
    assert tree.root_token == 7
    assert node_prefixes(tree) == prefixes(paths)
    assert len(tree) == 1 + len(prefixes(paths))


@given(paths_strategy)
def test_depths_and_ancestor_mask_match_paths(paths):
    tree = DraftTree.from_paths(1, paths)
    mask = tree.ancestor_mask()
    for node in range(len(tree)):
        path = tree.path_to(node)
        assert tree.depths[node] == len(path) - 1
        assert set(np.flatnonzero(mask[node])) == set(path)


@given(paths_strategy, paths_strategy, paths_strategy)
def test_merge_is_union_of_paths_with_max_scores_and_sources(a, b, c):
    rng = np.random.default_rng(len(a) * 100 + len(b))
    trees = []
    for name, paths in (("x", a), ("y", b), ("z", c)):
        scores = [sorted(rng.random(len(p)).tolist(), reverse=True) for p in paths]
        trees.append(DraftTree.from_paths(3, paths, scores, source=name))
    merged = merge(*trees)
    merged.validate()
    assert node_prefixes(merged) == prefixes(a) | prefixes(b) | prefixes(c)
    # every node's score is the max over the trees that hold it, its sources exactly those trees
    for node in range(1, len(merged)):
        key = tuple(int(merged.tokens[i]) for i in merged.path_to(node)[1:])
        holders = {}
        for t in trees:
            for m in range(1, len(t)):
                if tuple(int(t.tokens[i]) for i in t.path_to(m)[1:]) == key:
                    holders[t.source_names[0]] = float(t.scores[m])
        assert set(merged.sources_of(node)) == set(holders)
        assert merged.scores[node] == pytest.approx(max(holders.values()))


@settings(max_examples=60)
@given(paths_strategy, st.integers(1, 12), st.one_of(st.none(), st.integers(0, 4)))
def test_prune_keeps_a_connected_best_first_subtree(paths, budget, max_depth):
    rng = np.random.default_rng(budget)
    scores = [np.cumprod(rng.uniform(0.2, 1.0, len(p))).tolist() for p in paths]
    tree = DraftTree.from_paths(0, paths, scores)
    pruned = tree.prune(budget, max_depth=max_depth)
    pruned.validate()
    assert len(pruned) <= budget
    assert node_prefixes(pruned) <= node_prefixes(tree)
    if max_depth is not None:
        assert pruned.max_depth <= max_depth
    # oracle: nodes eligible (depth ok) sorted by score; with scores non-increasing along paths, the best-first
    # subtree holds exactly the top-(budget-1) eligible scores (as a multiset)
    eligible = [float(tree.scores[i]) for i in range(1, len(tree))
                if max_depth is None or tree.depths[i] <= max_depth]
    # scores from max-merged paths may not be monotone, so compare only the total against the greedy bound
    expected = sorted(eligible, reverse=True)[: budget - 1]
    monotone = all(tree.scores[i] <= tree.scores[tree.parents[i]] + 1e-7 for i in range(1, len(tree)))
    if monotone:
        assert sorted(pruned.scores[1:].tolist(), reverse=True) == pytest.approx(expected)


def test_validate_rejects_broken_trees():
    good = DraftTree.from_paths(0, [[1, 2], [1, 3]])
    good.validate()
    bad_parent = DraftTree(good.tokens, np.array([-1, 0, 3, 1], np.int32), good.scores, good.source_mask)
    with pytest.raises(ValueError):
        bad_parent.validate()
    dup = DraftTree(np.array([0, 1, 1]), np.array([-1, 0, 0], np.int32), np.ones(3, np.float32), np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="sibling"):
        dup.validate()


def test_merge_refuses_different_roots():
    with pytest.raises(ValueError, match="different roots"):
        merge(DraftTree.root_only(1), DraftTree.root_only(2))


def test_chain_and_token_paths():
    tree = DraftTree.from_chain(5, [6, 7, 8], [0.9, 0.5, 0.2], source="s")
    assert tree.token_paths() == [[6, 7, 8]]
    assert tree.expected_accepted() == pytest.approx(1.6)
    assert tree.sources_of(2) == ["s"] and tree.sources_of(0) == []


@given(paths_strategy, st.integers(0, 2**31 - 1))
def test_best_path_is_the_leaf_path_with_the_highest_score_sum(paths, seed):
    tree = DraftTree.from_paths(7, paths)
    tree = tree.with_scores(np.random.default_rng(seed).random(len(tree)).astype(np.float32))
    path = tree.best_path_indices()
    kids = tree.children()
    assert path[0] == 0 and not kids[path[-1]]  # from the root to a leaf
    assert all(tree.parents[b] == a for a, b in zip(path[:-1], path[1:]))
    leaf_sums = [sum(float(tree.scores[i]) for i in tree.path_to(leaf)[1:]) for leaf in range(len(tree))
                 if not kids[leaf]]
    assert sum(float(tree.scores[i]) for i in path[1:]) == pytest.approx(max(leaf_sums))
