"""Per-request chain drafting for serving engines that verify one chain per request (vLLM's proposer interface).

draftless's own engine verifies a *tree*; an engine like vLLM verifies one *chain* of at most ``k`` tokens per running
request and step. ``ChainDrafter`` bridges the two without knowing anything about the engine:

- each running request (a *row* of the engine's batch) gets a ``RequestState``: its own copy of the tokens seen so
  far and its own context drafters (the suffix automaton ``sam`` by default; ``ngram`` on request), so two
  requests never share an index; the ``history`` source, on request, reads one store shared by every request of
  the ``ChainDrafter``, which records each request when it leaves the engine;
- each step every source drafts a tree for the request's context; the trees are calibrated by one ``Calibrator``
  per source (shared by all requests: what a source's scores are worth is learned across requests, as the engine
  does), fused by longest prefix, and cut to a chain: from the root, always the child with the highest calibrated
  score (the estimated probability that the node is reached *and* accepted, i.e. the expected tokens it adds),
  up to ``k`` tokens. A deeper token is never worth more than its parent (it needs the parent accepted), so the
  chain's gains are made non-increasing;
- how many of the step's draft tokens the engine then verifies is chosen for the whole batch at once
  (``step_costs.best_draft_count``): the candidate tokens of every row, best gain first, are taken while they
  raise the step's expected tokens per millisecond on the engine's measured step-cost grid (``StepCosts``: the
  rows and the draft tokens of a step set its time; on vLLM's CPU backend one draft token adds about 15% to a
  one-request step, and sixteen, one per row, 45% to a sixteen-request step). Each row gets the prefix of its chain
  that made the cut; zero tokens is a candidate, so a step whose drafts do not pay for themselves speculates on no
  row;
- the next call shows what the engine accepted: the request's context has grown by the accepted drafts plus one
  token the target chose (the "bonus"), and those tokens are fed back to the calibrators;
- engines reuse and compact rows: a row may hold another request than last step, and a request may move to another
  row. A state is matched to a row only when its tokens are a prefix of the row's context and the context grew by
  at most ``k + 1`` tokens since (one verification step); otherwise the request is new and gets a fresh state.

Nothing here imports a serving engine (or transformers): ``draftless.integrations.vllm`` is the thin glue.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..engine.calibration import Calibrator
from ..engine.protocol import Drafter, RequestInfo, end_request
from ..engine.tree import DraftTree, merge_nonempty
from ..history.store import HistoryStore
from .step_costs import StepCosts, allocate


def _sam_factory(max_tokens: int, history: HistoryStore | None) -> Drafter:
    from ..drafters.sam import SamDrafter

    return SamDrafter()


def _ngram_factory(max_tokens: int, history: HistoryStore | None) -> Drafter:
    from ..drafters.ngram import NGramDrafter

    # A chain never uses more than max_tokens of a continuation, and the best path rarely hedges past a few
    # occurrences: reading less keeps the per-request Python cost small (it is paid for every row and step).
    return NGramDrafter(depth=max_tokens + 1, max_occurrences=4)


def _history_factory(max_tokens: int, history: HistoryStore | None) -> Drafter:
    from ..drafters.history import HistoryDrafter

    # Every request of the engine reads and extends the one shared store (the engine passes no namespace). No
    # warm-up: a chain is one source's single best guess, not a fused tree where a cold history's nodes could
    # displace the request's own, and the history is a source here only when the deployment names it.
    return HistoryDrafter(history, max_depth=max(4, max_tokens + 1), warmup_requests=0)


# Context-only sources (no datastore file, no model): what runs inside a serving engine without extra files. Each
# factory takes the longest chain the engine verifies (``max_tokens``) and the ``ChainDrafter``'s history store
# (None unless ``history`` is a source) and builds one request's drafter. ``history`` drafts from the requests
# this ``ChainDrafter`` saw finish before (SuffixDecoding-like memory, in memory only, bounded by the store).
SOURCE_FACTORIES: dict[str, Callable[[int, HistoryStore | None], Drafter]] = {
    "sam": _sam_factory, "ngram": _ngram_factory, "history": _history_factory}


# The suffix automaton alone: on vLLM-CPU it matched ``sam`` + ``ngram`` (tokens per step 1.20 / 1.18 / 1.19 against
# 1.24 / 1.20 / 1.21 at 1 / 4 / 16 requests, tokens/s within the run's noise) with less Python per row and step
# (0.44 against 0.58 ms at 16 rows when every step drafts, ``scripts/proposer_overhead.py``), which is what a fast
# (GPU) step cannot hide.
DEFAULT_SOURCES: tuple[str, ...] = ("sam",)


def best_chain(tree: DraftTree, max_len: int, min_gain: float) -> tuple[list[int], list[float]]:
    """The chain an engine that verifies chains should check from ``tree``: tokens and their scores.

    From the root, take the child with the highest score (ties: the lower node index, the proposer's order) while
    the chain is shorter than ``max_len`` and that child's score is at least ``min_gain``. With calibrated
    cumulative scores (a node's estimated probability of being reached and accepted) the chosen node is the most
    likely continuation and its score the expected tokens it adds. Returns ``(tokens, scores)``, both of length
    0..max_len, as Python lists (int token ids, float scores).
    """
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    kids = tree.children()
    tokens: list[int] = []
    scores: list[float] = []
    node = 0
    while len(tokens) < max_len and kids[node]:
        best = max(kids[node], key=lambda c: (float(tree.scores[c]), -c))
        score = float(tree.scores[best])
        if score < min_gain:
            break
        tokens.append(int(tree.tokens[best]))
        scores.append(score)
        node = best
    return tokens, scores


class RequestState:
    """One running request: the tokens it has committed (a private int64 copy) and its own drafters.

    ``context``: int64[L] (any integer dtype accepted), the request's prompt plus output so far, L >= 1.
    ``sources``: ``(name, drafter factory)`` pairs; each factory builds a fresh drafter for this request only;
    ``max_tokens``: the longest chain drafted and ``history`` the shared history store (passed to the factories).
    """

    def __init__(self, context: np.ndarray, sources: Sequence[tuple[str, Callable[[int, HistoryStore | None],
                                                                                   Drafter]]],
                 max_tokens: int = 8, history: HistoryStore | None = None):
        context = _as_context(context)
        self._buf = np.empty(max(256, 2 * len(context)), dtype=np.int64)
        self._buf[: len(context)] = context
        self._n = len(context)
        self.drafters = [(name, factory(max_tokens, history)) for name, factory in sources]
        for _, drafter in self.drafters:
            drafter.begin(self.tokens)
        # What the last proposal was, to learn from once the engine has verified it: per source (index, calibrated
        # tree, calibration keys), the context length it was drafted at, and the chain handed to the engine.
        self.pending: list[tuple[int, DraftTree, list]] = []
        self.pending_at = -1
        self.last_chain: list[int] = []

    @property
    def n(self) -> int:
        return self._n

    @property
    def tokens(self) -> np.ndarray:
        """int64[n] view of the committed tokens (read-only by convention: drafters get this view)."""
        return self._buf[: self._n]

    def continues(self, context: np.ndarray, max_growth: int) -> bool:
        """True when ``context`` is this request one step later: it starts with every token held here and is at
        most ``max_growth`` tokens longer."""
        n = self._n
        return n <= len(context) <= n + max_growth and bool(np.array_equal(context[:n], self._buf[:n]))

    def absorb(self, context: np.ndarray) -> np.ndarray:
        """Append the tokens of ``context`` past the ones held (call only when ``continues``); returns them."""
        new = np.asarray(context[self._n:], dtype=np.int64)
        end = self._n + len(new)
        if end > len(self._buf):
            grown = np.empty(max(2 * len(self._buf), end), dtype=np.int64)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n: end] = new
        self._n = end
        return new

    def finish(self) -> None:
        """The request left the engine: its drafters' ``end_request`` (the history source records its tokens)."""
        for _, drafter in self.drafters:
            end_request(drafter, self.tokens.copy(), RequestInfo())

    def draft_trees(self, budget: int) -> list[DraftTree]:
        """Each source's raw tree for the current context (root = last committed token), in source order."""
        context = self.tokens
        return [drafter.draft(context, budget) for _, drafter in self.drafters]


def _as_context(context) -> np.ndarray:
    arr = np.asarray(context)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"a context is a non-empty 1-D token array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"a context holds integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


class ChainDrafter:
    """Chains for every running request of an engine that verifies chains (see the module docstring).

    - ``max_tokens``: the most draft tokens per request and step (vLLM's ``num_speculative_tokens``), >= 1;
    - ``sources``: names in ``SOURCE_FACTORIES`` (``"sam"``, ``"ngram"``, ``"history"``); several are fused;
    - ``history``: the store the ``history`` source reads and extends (default: a fresh in-memory ``HistoryStore``
      with its default memory bound, when ``history`` is a source). A request is recorded when the engine hands
      its row to another request (or its kept state is dropped), with every token this drafter saw of it;
    - ``costs``: the engine's step-cost grid (``StepCosts``; default ``StepCosts.default()``, measured on vLLM-CPU);
    - ``margin``: a step speculates only when its expected rate beats the plain step's by this factor (>= 1);
    - ``min_gain``: no chain token below this calibrated gain is ever a candidate (bounds the work per row);
    - ``tree_budget``: nodes each source may draft before the chain is cut from the fused tree;
    - ``calibrate``: False uses the sources' raw scores (then ``min_gain`` applies to those);
    - ``max_states``: states kept for rows that are not running (a request may come back to another row).

    ``propose(contexts, limits)`` is the whole interface; ``stats`` counts what happened.
    """

    def __init__(self, max_tokens: int, *, sources: Sequence[str] = DEFAULT_SOURCES, costs: StepCosts | None = None,
                 margin: float = 1.0, min_gain: float = 0.05, tree_budget: int = 16, calibrate: bool = True,
                 max_states: int = 1024, history: HistoryStore | None = None):
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        unknown = [s for s in sources if s not in SOURCE_FACTORIES]
        if unknown or not sources:
            raise ValueError(f"sources must be a non-empty subset of {sorted(SOURCE_FACTORIES)}, got {list(sources)}")
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources repeat a name: {list(sources)}")
        if not 0.0 <= float(min_gain) <= 1.0:
            raise ValueError(f"min_gain must be in [0, 1], got {min_gain}")
        if not float(margin) >= 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        if costs is not None and not isinstance(costs, StepCosts):
            raise TypeError(f"costs must be a StepCosts, got {type(costs).__name__}")
        self.max_tokens = int(max_tokens)
        self.sources = [(name, SOURCE_FACTORIES[name]) for name in sources]
        if history is not None and "history" not in sources:
            raise ValueError("a history store was given but 'history' is not among the sources")
        self.history = (history if history is not None else HistoryStore()) if "history" in sources else None
        self.costs = StepCosts.default() if costs is None else costs
        self.margin = float(margin)
        self.min_gain = float(min_gain)
        self.tree_budget = max(2, int(tree_budget))
        self.calibrators = [Calibrator() for _ in sources] if calibrate else None
        self.max_states = int(max_states)
        self._states: dict[int, RequestState] = {}  # row -> state of the request last seen in that row
        self.stats = {"calls": 0, "proposals": 0, "proposed": 0, "accepted": 0, "new_requests": 0, "moved": 0,
                      "gated_steps": 0}

    # ------------------------------------------------------------------------------------------ rows
    def _claim(self, contexts: Sequence[np.ndarray | None]) -> dict[int, RequestState]:
        """Match every row that wants a draft to the state of its request, or a fresh state."""
        growth = self.max_tokens + 1
        free = dict(self._states)
        claimed: dict[int, RequestState] = {}
        unmatched: list[int] = []
        for row, ctx in enumerate(contexts):
            if ctx is None:
                continue
            state = free.get(row)
            if state is not None and state.continues(ctx, growth):
                claimed[row] = free.pop(row)
            else:
                unmatched.append(row)
        fresh: list[int] = []
        for row in unmatched:
            # A request the engine moved to another row (batch compaction) brings its state along.
            moved = next((r for r, s in free.items() if s.continues(contexts[row], growth)), None)
            if moved is not None:
                claimed[row] = free.pop(moved)
                self.stats["moved"] += 1
            else:
                fresh.append(row)
        # Rows that are not drafting this call keep their state (a request in a prefill chunk, one that comes
        # back); a state displaced by another request is dropped.
        kept = {r: s for r, s in free.items() if r not in claimed and (r >= len(contexts) or contexts[r] is None)}
        if len(kept) > self.max_states:
            kept = dict(list(kept.items())[-self.max_states:])
        kept_ids = {id(s) for s in kept.values()}
        for state in free.values():
            if id(state) not in kept_ids:  # its request has left the engine
                state.finish()
        # New requests start after the finished ones are recorded, so that their history already holds them.
        for row in fresh:
            claimed[row] = RequestState(contexts[row], self.sources, self.max_tokens, self.history)
            self.stats["new_requests"] += 1
        self._states = {**kept, **claimed}
        return claimed

    # ------------------------------------------------------------------------------------------ one step
    def _learn(self, state: RequestState, committed: np.ndarray) -> None:
        """Feed what the engine committed after the last proposal (accepted drafts + bonus) to the calibrators."""
        if state.pending_at < 0 or len(committed) == 0:
            return
        chain = state.last_chain
        hits = 0
        while hits < min(len(chain), len(committed)) and chain[hits] == int(committed[hits]):
            hits += 1
        self.stats["accepted"] += hits
        if self.calibrators is not None:
            for i, tree, keys in state.pending:
                self.calibrators[i].observe(tree, keys, committed)
        state.pending, state.pending_at, state.last_chain = [], -1, []

    def _chain(self, state: RequestState, limit: int) -> tuple[list[int], np.ndarray]:
        """The request's best chain (at most ``limit`` tokens, gains >= ``min_gain``) and its gains, float64[len],
        made non-increasing; records the calibrated trees to learn from once the engine has verified the step."""
        root = int(state.tokens[-1])
        trees = []
        pending = []
        for i, tree in enumerate(state.draft_trees(self.tree_budget)):
            if len(tree) <= 1:
                continue
            if tree.root_token != root:
                raise ValueError(f"source {self.sources[i][0]!r} drafted from root {tree.root_token}, not {root}")
            if self.calibrators is not None:
                tree = tree if tree.source_names else tree.with_source(self.sources[i][0])
                tree, keys = self.calibrators[i].calibrate(tree)
                pending.append((i, tree, keys))
            trees.append(tree)
        fused = merge_nonempty(root, trees, self.tree_budget * len(self.sources))
        chain, scores = best_chain(fused, min(self.max_tokens, limit), self.min_gain)
        state.pending, state.pending_at = pending, state.n  # ``propose`` records the part of the chain it hands over
        return chain, np.minimum.accumulate(np.asarray(scores, dtype=np.float64))

    def propose(self, contexts: Sequence[np.ndarray | None], limits: Sequence[int] | None = None) -> list[list[int]]:
        """One chain per row.

        ``contexts[row]``: int[L] every token the row's request has committed (prompt + output, including what the
        last step accepted), or None for a row that gets no draft this step. ``limits[row]``: the most draft tokens
        that row may take (room left before a length limit; default ``max_tokens``). Returns a list per row of
        0..min(max_tokens, limit) int token ids (empty for a None row).
        """
        if limits is not None and len(limits) != len(contexts):
            raise ValueError(f"{len(limits)} limits for {len(contexts)} rows")
        self.stats["calls"] += 1
        contexts = [None if c is None else _as_context(c) for c in contexts]
        claimed = self._claim(contexts)
        out: list[list[int]] = [[] for _ in contexts]
        drafting: list[int] = []
        gains: list[np.ndarray] = []
        for row, state in claimed.items():
            committed = state.absorb(contexts[row])
            self._learn(state, committed)
            limit = self.max_tokens if limits is None else int(limits[row])
            if limit <= 0:
                continue
            out[row], row_gains = self._chain(state, limit)
            drafting.append(row)
            gains.append(row_gains)
        kept = allocate(gains, len(claimed), self.costs, self.margin)
        if any(len(g) for g in gains) and not any(kept):
            self.stats["gated_steps"] += 1
        # What is not verified is still learnt from: the committed tokens (at least the bonus) say whether the
        # chain's first tokens were right, and nodes past the committed path are not counted as tried.
        for row, n_kept in zip(drafting, kept):
            out[row] = out[row][:n_kept]
            claimed[row].last_chain = out[row]
            if out[row]:
                self.stats["proposals"] += 1
                self.stats["proposed"] += len(out[row])
        return out

    def state_of(self, row: int) -> RequestState | None:
        """The state last matched to ``row`` (tests and diagnostics)."""
        return self._states.get(row)
