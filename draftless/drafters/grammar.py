"""Drafts from the grammar a request's output must match: what it forces, and where it admits only a few tokens.

Structured output (JSON for a schema, a tool call, a regex) is full of tokens the grammar alone decides: keys the
prompt never names, quotes, braces, commas, the rest of an enum value once its first token is out. With the
grammar's processor applied, a position where the grammar admits one token commits that token with certainty, so
drafting it costs a node and saves a pass.

- ``GrammarDrafter`` (spec ``grammar``): a source that grows the grammar's own tree from the committed output:
  chains of admitted-alone tokens (score 1), branches where the grammar admits at most ``branch_limit`` tokens
  (scores split among them, the grammar's fast-forward token favoured), nothing where it is open.
- ``GrammarGuard``: what ``auto`` is wrapped in. With a grammar it removes the tokens the grammar forbids from the
  inner drafter's tree (the processor would reject them: they only take budget), adds the grammar's tree at the
  root, and continues the best legal leaves with what the grammar forces after them (a drafted string value's
  closing quote, then the next key). Without a grammar it is the inner drafter.

Both learn the grammar from ``RequestInfo.grammar`` (the engine finds it among the row's logits processors), and
never leave it: every node they add or keep is admitted after its path.
"""
from __future__ import annotations

import heapq
import time

import numpy as np

from ..engine.protocol import BaseDrafter, CompositeDrafter, Drafter, RequestInfo, StepFeedback
from ..engine.tree import DraftTree, merge
from ..grammar.matcher import GrammarViolation

SOURCE = "grammar"
# score of the grammar's fast-forward token where the grammar also admits a few other spellings
FAST_FORWARD_SHARE = 0.8
# score of the token the output took the last time the grammar admitted the same few tokens (a model keeps its
# style: ``": "`` rather than ``":``, the same spacing after every comma, the same enum value for a field)
REMEMBERED_SHARE = 0.9
# at most this many remembered choices per grammar (cleared when full)
MAX_CHOICES = 4096
# a position admitting up to this many tokens (more than a branch takes: the whitespace tokens between JSON
# tokens) still has its choice remembered, and drafted alone when the same position comes again
MEMORY_LIMIT = 64
# an open position (free text inside a string) gets branches for the tokens that most often closed one, scored by
# how often they did: at most this many, and only while the branch's score stays above MIN_EXIT_SCORE
EXIT_BRANCHES = 2
MIN_EXIT_SCORE = 0.02


class _Habits:
    """What the output did where the grammar left it a choice, learned from committed tokens (per grammar text,
    across requests: the same schema meets the same model again).

    - ``choices``: (the token before, sorted admitted ids) at a position admitting at most ``MEMORY_LIMIT`` ids
      -> the id the output took there last;
    - ``exits``: id -> how often it left an open position (free text) for a narrow one (a string's closing quote);
      ``opens``: open positions seen, so ``exits[t] / opens`` estimates the chance that t ends the text here."""

    def __init__(self):
        self.choices: dict[tuple[int, tuple[int, ...]], int] = {}
        self.exits: dict[int, int] = {}
        self.opens = 0

    def exit_branches(self) -> list[tuple[int, float]]:
        """``(token, chance)`` of the most frequent exits, best first (at most ``EXIT_BRANCHES``)."""
        ranked = sorted(self.exits.items(), key=lambda kv: -kv[1])[:EXIT_BRANCHES]
        return [(t, min(0.5, n / max(1, self.opens))) for t, n in ranked]


class _GrammarState:
    """The grammar of the current request, a matcher over it synced to the committed output, and the ``_Habits``
    the output showed under that grammar."""

    def __init__(self, branch_limit: int):
        self.branch_limit = branch_limit
        self.grammar = None
        self.matcher = None
        self.prompt_len = 0
        self.habits = _Habits()
        self._memory: dict[str, _Habits] = {}
        self._after_open: int | None = None  # the last committed token, when it was taken at an open position

    def begin(self, prompt_len: int, info: RequestInfo) -> None:
        grammar = getattr(info, "grammar", None)
        if grammar is not self.grammar:
            self.grammar = grammar
            self.matcher = grammar.matcher() if grammar is not None else None
            self.habits = self._memory.setdefault(grammar.text, _Habits()) if grammar is not None else _Habits()
        elif self.matcher is not None:
            self.matcher.sync([])
        self.prompt_len = int(prompt_len)
        self._after_open = None

    def at_output(self, context: np.ndarray) -> bool:
        """Move the matcher after the committed output (``context[prompt_len:]``), remembering the choices made
        on the way; False (and the grammar dropped for this request) when there is no grammar or the output left
        it (the caller does not enforce it)."""
        matcher = self.matcher
        if matcher is None:
            return False
        output = [int(t) for t in context[self.prompt_len:]]
        common = matcher.rewind(output)
        habits = self.habits
        new = output[common:]
        for token in new + ([None] if new else []):  # None: the position after the output, for the last exit
            admitted = matcher.allowed_ids(limit=MEMORY_LIMIT)
            if self._after_open is not None and admitted is not None:
                habits.exits[self._after_open] = habits.exits.get(self._after_open, 0) + 1
            if token is None:
                break
            if admitted is None:
                habits.opens += 1
            elif len(admitted) > 1:
                if len(habits.choices) >= MAX_CHOICES:
                    habits.choices.clear()
                before = matcher.tokens[-1] if matcher.tokens else -1
                habits.choices[(before, tuple(admitted.tolist()))] = token
            self._after_open = token if admitted is None else None
            if not matcher.push(token):
                self.grammar = self.matcher = None
                return False
        self._after_open = None
        return True


def grow(matcher, base: list[int], budget: int, max_depth: int, branch_limit: int, score: float = 1.0,
         habits: _Habits | None = None) -> list[tuple[int, int, float]]:
    """The grammar's tree after the output ``base`` (the matcher's tokens there), best-first by score.

    Returns nodes ``(parent, token, score)`` in topological order, ``parent`` -1 for a child of the attach point
    and else an index into the returned list; ``score``: the attach point's score, multiplied down the tree. At most
    ``budget`` nodes and ``max_depth`` levels; a position admitting more than ``branch_limit`` tokens is open (no
    children but the learned exits, see ``_Habits``). Where it admits a few, the remembered choice or else the
    grammar's fast-forward token is favoured. The matcher is left at ``base``."""
    habits = habits if habits is not None else _Habits()
    exits = habits.exit_branches()
    matcher.sync(base)  # from here on the matcher holds base and compares only past it
    nodes: list[tuple[int, int, float]] = []
    paths: list[list[int]] = []
    frontier = [(-score, -1)]
    while frontier and len(nodes) < budget:
        neg, at = heapq.heappop(frontier)
        path = paths[at] if at >= 0 else []
        if len(path) >= max_depth:
            continue
        matcher.sync(base + path, known=len(base))
        allowed = matcher.allowed_ids(limit=MEMORY_LIMIT)
        before = path[-1] if path else (base[-1] if base else -1)
        remembered = None
        if allowed is not None and len(allowed) > branch_limit:  # too many to branch: the remembered one alone
            remembered = habits.choices.get((before, tuple(allowed.tolist())))
            allowed = None
        if remembered is not None:
            allowed, shares = np.asarray([remembered], dtype=np.int64), [REMEMBERED_SHARE]
        elif allowed is None:  # open (free text): only the tokens that have ended such text before
            picks = [(t, chance) for t, chance in exits if -neg * chance >= MIN_EXIT_SCORE and matcher.can_take(t)]
            allowed = np.asarray([t for t, _ in picks], dtype=np.int64)
            shares = [chance for _, chance in picks]
        elif len(allowed) == 0:
            continue  # finished
        elif len(allowed) == 1:
            shares = [1.0]
        else:
            favoured, share = habits.choices.get((before, tuple(allowed.tolist()))), REMEMBERED_SHARE
            if favoured is None:
                forced = matcher.forced_ids()
                favoured, share = (forced[0] if forced else None), FAST_FORWARD_SHARE
            if favoured is None or favoured not in allowed:
                shares = [1.0 / len(allowed)] * len(allowed)
            else:
                rest = (1.0 - share) / (len(allowed) - 1)
                shares = [share if t == favoured else rest for t in allowed]
        for token, share in zip(allowed.tolist(), shares):
            if len(nodes) >= budget:
                break
            nodes.append((at, int(token), -neg * share))
            paths.append(path + [int(token)])
            if token not in matcher.eos_ids:  # nothing follows an EOS
                heapq.heappush(frontier, (neg * share, len(nodes) - 1))
    matcher.sync(base, known=len(base))
    return nodes


def _grammar_tree(root: int, prefix: list[int], prefix_scores: list[float],
                  nodes: list[tuple[int, int, float]]) -> DraftTree:
    """A ``grammar``-sourced tree: the chain ``prefix`` under ``root`` (with its scores), then ``grow``'s
    ``nodes`` under the chain's end."""
    tokens, parents, scores = [root] + prefix, list(range(-1, len(prefix))), [1.0] + prefix_scores
    at = len(tokens) - 1
    for parent, token, score in nodes:
        tokens.append(token)
        parents.append(at if parent < 0 else at + 1 + parent)
        scores.append(score)
    return DraftTree.from_arrays(root, tokens, parents, scores, SOURCE)


class GrammarDrafter(BaseDrafter):
    """The grammar's own tree from the committed output (see the module docstring); a root-only tree for a
    request without a grammar. ``max_nodes`` / ``max_depth``: the tree's size; ``branch_limit``: the most tokens a
    node may branch into (a position admitting more is open)."""

    name = SOURCE

    def __init__(self, max_nodes: int = 32, max_depth: int = 24, branch_limit: int = 8):
        self.max_nodes, self.max_depth, self.branch_limit = int(max_nodes), int(max_depth), int(branch_limit)
        self._state = _GrammarState(self.branch_limit)

    def begin(self, prompt_ids: np.ndarray) -> None:
        self._state.begin(len(prompt_ids), RequestInfo())

    def begin_request(self, prompt_ids: np.ndarray, info: RequestInfo) -> None:
        self._state.begin(len(prompt_ids), info)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        root = int(context[-1])
        if not self._state.at_output(context):
            return DraftTree.root_only(root)
        matcher = self._state.matcher
        nodes = grow(matcher, list(matcher.tokens), min(budget, self.max_nodes) - 1, self.max_depth,
                     self.branch_limit, habits=self._state.habits)
        return _grammar_tree(root, [], [], nodes)


class GrammarGuard(CompositeDrafter):
    """``inner`` kept to the request's grammar and completed by it (see the module docstring).

    ``extend_leaves``: how many of the best legal leaves of the inner tree the grammar continues; ``max_nodes``:
    the most nodes the grammar adds at the root (each continued leaf gets a share of them). Each node costs a
    next-token mask (40-100 us), and a CPU's trees keep 4-8 nodes, so the guard grows few past that."""

    def __init__(self, inner: Drafter, max_nodes: int = 16, max_depth: int = 24, branch_limit: int = 8,
                 extend_leaves: int = 3):
        self.inner = inner
        self.name = inner.name
        self.wants_hidden_states = inner.wants_hidden_states
        self.calibrates_scores = inner.calibrates_scores
        self.pinned_sources = tuple(getattr(inner, "pinned_sources", ()))
        self.max_nodes, self.max_depth, self.branch_limit = int(max_nodes), int(max_depth), int(branch_limit)
        self.extend_leaves = int(extend_leaves)
        self._state = _GrammarState(self.branch_limit)
        self.grammar_s = 0.0  # seconds spent on the grammar (matcher walks, masks), not in the inner drafter

    def __getattr__(self, name: str):
        # everything else is the inner drafter's (its sources, its store): the guard stands in for it
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def sources(self) -> tuple:
        return (self.inner,)

    def begin_request(self, prompt_ids: np.ndarray, info: RequestInfo) -> None:
        self._state.begin(len(prompt_ids), info)
        super().begin_request(prompt_ids, info)

    def feedback(self, step: StepFeedback) -> None:
        self.inner.feedback(step)

    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        tree = self.inner.draft(context, budget)
        if self._state.matcher is None:
            return tree
        t0 = time.perf_counter()
        try:
            return self._follow_grammar(context, tree, budget)
        except GrammarViolation:  # pragma: no cover - a matcher disagreeing with itself: draft without it
            self._state.grammar = self._state.matcher = None
            return tree
        finally:
            self.grammar_s += time.perf_counter() - t0

    def _follow_grammar(self, context: np.ndarray, tree: DraftTree, budget: int) -> DraftTree:
        if not self._state.at_output(context):
            return tree
        matcher = self._state.matcher
        base = list(matcher.tokens)
        legal = _legal_subtree(tree, matcher, base)
        grammar_budget = max(1, min(budget, self.max_nodes) - 1)
        root = int(legal.tokens[0])
        habits = self._state.habits
        trees = [legal, _grammar_tree(root, [], [], grow(matcher, base, grammar_budget, self.max_depth,
                                                          self.branch_limit, habits=habits))]
        # continue the best legal leaves of the inner tree with what the grammar forces after them
        kids = legal.children()
        leaves = sorted((i for i in range(1, len(legal)) if not kids[i]), key=lambda i: -float(legal.scores[i]))
        share = max(1, grammar_budget // max(1, self.extend_leaves))
        for leaf in leaves[: self.extend_leaves]:
            path = legal.path_to(leaf)[1:]
            prefix = [int(legal.tokens[i]) for i in path]
            nodes = grow(matcher, base + prefix, share, self.max_depth, self.branch_limit,
                         score=float(legal.scores[leaf]), habits=habits)
            if nodes:  # the leaf's path again: merge folds it into the inner tree's nodes
                trees.append(_grammar_tree(root, prefix, [float(legal.scores[i]) for i in path], nodes))
        matcher.sync(base)
        trees = [t for t in trees if len(t) > 1]
        if not trees:
            return legal
        return trees[0] if len(trees) == 1 else merge(*trees)


def _legal_subtree(tree: DraftTree, matcher, base: list[int]) -> DraftTree:
    """``tree`` without the nodes the grammar forbids after their path (and their subtrees); the matcher stands
    at ``base`` before and after."""
    if len(tree) == 1:
        return tree
    kids = tree.children()
    keep = [0]
    stack = [(c, 1) for c in reversed(kids[0])]  # (node, depth)
    depth_now = 0  # tokens pushed past base
    while stack:
        node, depth = stack.pop()
        matcher.pop(depth_now - (depth - 1))
        depth_now = depth - 1
        if matcher.push(int(tree.tokens[node])):
            depth_now = depth
            keep.append(node)
            stack.extend((c, depth + 1) for c in reversed(kids[node]))
    matcher.pop(depth_now)
    if matcher.tokens != base:  # pragma: no cover - the walk pops what it pushed
        matcher.sync(base)
    return tree if len(keep) == len(tree) else tree.subset(np.sort(np.asarray(keep, dtype=np.int64)))
