"""The batched loop: the rows of a left-padded batch verified together, one model pass per step.

Each row keeps what the single-row loop (``generator.py``) gives a request: its own ``RequestState`` (buffer,
processors, stopping rule, stats), its own drafter (one instance per row, so drafter state never mixes rows) and its
own tree each step, drafted, accepted, committed and learnt from through the same ``Step`` (``step.py``). What the
rows share is the model pass and one KV cache:

- **prefill**: a causal pass over the padded prompts minus their last token, padding masked and positions
  counted from each row's first real token (``prefill.py``, ``prefill_batch``; in chunks for a long batch on a model
  with sliding-window layers);
- **verify** (``verify_batch``): the b active rows' trees padded to one node count n (a padding node sees only
  itself and is never accepted) go through the model as [b, n] ids with per-row ``position_ids`` and a 4-D mask
  [b, 1, n, width + n];
- **the ragged cache**: every layer holds [b, H, width, D]. Row i's committed entries are the slots
  ``[starts[i], starts[i] + prefix_len)``; a pass appends every row's n nodes at the common write pointer
  ``width``; after acceptance each row moves its accepted nodes down to just after its own committed entries
  (``hf/kv_cache.py``, ``move_row_entries``), and the slots between a row's end and the write pointer, like its
  left padding, are masked out of every later pass. The new write pointer is the longest row's end, so the cache is
  never wider than the longest row plus one tree;
- **finished rows** leave the batch (``select_batch_rows``): later passes, drafts and masks cover only rows still
  decoding.

Tree sizes: each row's tree is sized by the engine's budget on a row's share of a batched pass,
t(b * n) / b for b rows (``SpeculativeGenerator.budget_curve``); the pass is padded to the largest tree, and
the rows whose budget chose fewer nodes are then given their next-best nodes up to that size (they cost nothing
more). Greedy output is token-identical to ``model.generate`` on the same
batch; sampling draws every row from the one ``torch.Generator``, rows in batch order, so a seed reproduces a run
but not the row-by-row path's draws.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ..hf.attention import AttentionLayout, batch_tree_mask, cut_sliding_mask
from ..hf.compat import cache_keyword
from ..hf.generation import DecodingPlan, processors_for_row
from ..hf.kv_cache import move_row_entries, new_cache, select_batch_rows, windowed_layers, windowed_views
from .prefill import prefill_batch
from .protocol import Drafter, RequestInfo, begin_request, end_request
from .step import RequestState, Step, new_row_state
from .tree import DraftTree


@dataclass
class BatchState:
    """The rows still decoding and where their entries sit in the shared cache.

    - ``active``: indices (into the call's rows) of the rows still decoding, in the cache's batch order;
    - ``starts``: int64[b], per active row the slot of its first committed entry (its left padding before it);
    - ``width``: slots every row of the cache holds (the write pointer of the next pass).

    Row i's entries end at ``starts[i] + rows[active[i]].prefix_len``."""

    cache: object
    active: list[int]
    starts: np.ndarray
    width: int

    def ends(self, rows: list[RequestState]) -> np.ndarray:
        """int64[b]: the slot after each active row's last committed entry."""
        return self.starts + np.array([rows[r].prefix_len for r in self.active], dtype=np.int64)


def verify_batch(model, layout: AttentionLayout, batch: BatchState, trees: list[DraftTree], ends: np.ndarray,
                 want_hidden: bool, dtype: torch.dtype, device: torch.device, on=None, windowed: bool = True,
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward over every active row's tree, padded to n = the largest tree's node count; appends the [b, n]
    nodes' keys/values at slots ``[width, width + n)``.

    ``on``: the context the forward runs under (the engine's ``VerificationPaths.context`` of the path for b * n
    nodes; default: the model as it is). ``windowed``: sliding-window layers attend only from the first cached slot
    that some row's window reaches (as ``generator.verify_tree``). Returns logits float [b, n, V] (row i's node j
    predicts the token after it; padding nodes' rows are garbage) and, when ``want_hidden``, last-layer hidden
    states float [b, n, H]."""
    b, n = len(trees), max(len(t) for t in trees)
    tokens = np.empty((b, n), dtype=np.int64)
    depths = np.zeros((b, n), dtype=np.int64)
    ancestors = np.zeros((b, n, n), dtype=bool)
    ancestors[:, np.arange(n), np.arange(n)] = True  # a padding node sees only itself
    for i, tree in enumerate(trees):
        m = len(tree)
        tokens[i, :m] = tree.tokens
        tokens[i, m:] = tree.tokens[0]  # any id inside the vocabulary: padding nodes are never read
        depths[i, :m] = tree.depths
        ancestors[i, :m, :m] = tree.ancestor_mask()
    to = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    mask, positions = batch_tree_mask(layout, to(ancestors), to(depths), to(batch.starts), to(ends), batch.width,
                                      dtype)
    # sliding-window layers attend from the first cached slot some row's window reaches (kv_cache.windowed_views)
    layers = windowed_layers(batch.cache, layout.sliding_layers) if windowed else None
    cut = 0
    if layers is not None:
        mask, cut = cut_sliding_mask(layout, mask, batch.width)
    with windowed_views(layers, cut) if cut else nullcontext(), on if on is not None else nullcontext():
        out = model(input_ids=to(tokens), position_ids=positions, attention_mask=mask, use_cache=True,
                    output_hidden_states=want_hidden, **{cache_keyword(model): batch.cache})
    return out.logits, (out.hidden_states[-1] if want_hidden else None)


def commit_batch(batch: BatchState, rows: list[RequestState], accepted: list[np.ndarray], ends: np.ndarray,
                 device: torch.device) -> None:
    """Compact the shared cache after a pass: row i's accepted nodes (``accepted[i]``: int64[k_i] node indices,
    root first) move from slots ``width + accepted[i]`` to ``ends[i] + [0, k_i)``, its ends before the commit;
    rows whose ``RequestState`` is now finished leave the batch. Call after ``step.commit`` updated the rows."""
    n_rows = len(accepted)
    k_max = max(len(a) for a in accepted)
    src = np.full((n_rows, k_max), batch.width, dtype=np.int64)
    dst = ends[:, None] + np.arange(k_max, dtype=np.int64)[None, :]  # distinct per row; the extras are past its end
    for i, acc in enumerate(accepted):
        src[i, : len(acc)] = batch.width + acc
    keep = [i for i, r in enumerate(batch.active) if not rows[r].finished]
    if not keep:
        batch.active = []
        return
    new_ends = ends + np.array([len(a) for a in accepted], dtype=np.int64)
    width = int(new_ends[keep].max())
    move_row_entries(batch.cache, torch.from_numpy(src).to(device), torch.from_numpy(dst).to(device), width)
    if len(keep) < n_rows:
        select_batch_rows(batch.cache, torch.tensor(keep, dtype=torch.int64, device=device), width)
        batch.starts = batch.starts[keep]
        batch.active = [batch.active[i] for i in keep]
    batch.width = width


def run_batch(engine, padded: np.ndarray, n_pad: list[int], plan: DecodingPlan, drafters: list[Drafter],
              generator: torch.Generator | None, info: RequestInfo, new_stop) -> list[RequestState]:
    """Decode a left-padded batch (``padded``: int64 [B, P]; ``n_pad``: each row's padding length) with one
    drafter per row (``drafters``: B independent instances) until every row is finished; ``engine``: the
    ``SpeculativeGenerator`` whose model verifies and whose ``Step`` each row's drafting, acceptance and learning
    go through; ``new_stop()``: a fresh ``StopRule`` per row. Returns the rows' ``RequestState``s (their caches are
    None: the rows shared one). A row's stats hold its own draft, accept and feedback times, its share of each pass
    it was in (prefill and verify times divided among the pass's rows) and, as ``total_ms``, the time until it
    finished."""
    t_start = time.perf_counter()
    step = Step(engine)
    rows = [new_row_state(padded[r], n_pad[r], plan, processors_for_row(plan.processors, r), new_stop(), None,
                          generator, None) for r in range(len(padded))]
    if all(r.finished for r in rows):  # the token limit leaves nothing to generate
        return rows
    t0 = time.perf_counter()
    cache = new_cache()
    starts = prefill_batch(engine.model, engine.layout, padded, n_pad, cache, engine.dtype, engine.device)
    batch = BatchState(cache=cache, active=list(range(len(rows))), starts=starts, width=padded.shape[1] - 1)
    prefill_ms = (time.perf_counter() - t0) * 1000 / len(rows)
    for state, drafter in zip(rows, drafters):
        state.stats.prefill_ms = prefill_ms
        begin_request(drafter, state.context[: state.length].copy(), info.for_processors(state.processors))
    want_hidden = any(d.wants_hidden_states for d in drafters)
    while batch.active:
        b = len(batch.active)
        drafts = [step.draft(rows[r], drafters[r], rows=b) for r in batch.active]
        n_pass = max(len(d.tree) for d in drafts)
        for i, r in enumerate(batch.active):
            # the pass is padded to n_pass nodes anyway: a row whose budget chose fewer gets its next-best nodes free
            d = drafts[i]
            if len(d.tree) < min(n_pass, len(d.raw)):
                drafts[i] = step.draft(rows[r], drafters[r], rows=b, min_size=n_pass, raw=d.raw)
                drafts[i].ms += d.ms
        trees = [d.tree for d in drafts]
        ends = batch.ends(rows)
        t1 = time.perf_counter()
        logits, hidden = verify_batch(engine.model, engine.layout, batch, trees, ends, want_hidden, engine.dtype,
                                      engine.device, on=step.pass_context(len(trees) * n_pass))
        verify_ms = (time.perf_counter() - t1) * 1000 / len(trees)
        t2 = time.perf_counter()
        steps = []
        for i, r in enumerate(list(batch.active)):
            n = len(trees[i])
            acc, committed = step.accept_and_commit(rows[r], trees[i], logits[i, :n])
            steps.append((r, i, acc, committed))
        commit_batch(batch, rows, [acc.accepted for _, _, acc, _ in steps], ends, engine.device)
        accept_ms = (time.perf_counter() - t2) * 1000 / len(trees)
        for r, i, acc, committed in steps:
            n = len(trees[i])
            step.learn(rows[r], drafters[r], drafts[i], acc, committed, logits[i, :n],
                       hidden[i, :n] if hidden is not None else None, verify_ms=verify_ms, accept_ms=accept_ms)
            if rows[r].finished:
                end_request(drafters[r], rows[r].context[: rows[r].length].copy(),
                            info.for_processors(rows[r].processors))
                rows[r].stats.total_ms = (time.perf_counter() - t_start) * 1000
    for state in rows:
        state.stats.new_tokens = len(state.produced)
    return rows
