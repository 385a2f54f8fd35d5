"""``model:PATH``: a smaller causal LM with the target's tokenizer drafts a dynamic tree, EAGLE-2 style.

Growing the tree, one draft-model forward pass per level::

    level 0   feed the committed tokens the draft cache lacks, ending with the root  -> p(. | context)
              root's top-k tokens become depth-1 nodes, score = p(token)
    level d   feed the best ``expand`` nodes of depth d (highest cumulative score, in one pass with a tree mask:
              each sees the cached context and its own ancestors)               -> their top-k children at d + 1
              score(child) = score(parent) * p_draft(child | path)   (cumulative draft probability)

Expansion stops at ``max_depth``, when no frontier node can still enter the ``budget`` best nodes (a child never
scores above its parent), or when the frontier's best score falls below ``min_score``. The tree returned is the
best ``budget`` nodes by score, a connected tree because scores never increase along a path.

Draft-model KV cache. It holds a prefix of the committed tokens, then (during a draft) the tree nodes fed so far.
Before the next draft the cache is compacted in place (``kv_cache.keep_prefix_and``) to the committed prefix plus
the fed nodes that lie on the path the target accepted, so accepted drafts are never re-fed; what remains of the
committed tokens (usually just the bonus token, the next root) is fed in level 0. The drafter re-synchronises from
the context it is given, so a step without a draft (see ``hybrid.SelectiveDrafter``) or without feedback is fine.

Drafts are a deterministic function of the context (top-k, no sampling); sample-and-walk acceptance is exact for
any tree fixed before the step's draws anyway.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import torch

from ..engine.protocol import BaseDrafter, StepFeedback
from ..engine.tree import DraftTree, ancestor_matrix
from ..hf.attention import inspect_model, tree_attention_mask
from ..hf.compat import cache_keyword
from ..hf.kv_cache import keep_prefix_and, new_cache

CHAIN_CHUNK = 256  # committed tokens fed per pass when the draft cache catches up (prompt prefill)


class TokenizerMismatch(ValueError):
    """The draft model does not share the target's vocabulary."""


def _vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    return getattr(config.get_text_config(decoder=True), "vocab_size", None)


def check_same_vocabulary(draft_model, target=None, tokenizer=None, target_tokenizer=None) -> None:
    """Raise ``TokenizerMismatch`` unless the draft model can draft for the target.

    With both tokenizers: their vocabularies must hash alike (``draftless.tokenizer_identity``). Otherwise the
    models' configured vocabulary sizes must agree (a weaker check: pass the tokenizers when you have them).
    """
    if tokenizer is not None and target_tokenizer is not None:
        from ..tokenizer_identity import same_tokenizer, tokenizer_identity

        a, b = tokenizer_identity(tokenizer), tokenizer_identity(target_tokenizer)
        if not same_tokenizer(a, b):
            raise TokenizerMismatch(
                f"the draft model's tokenizer ({a['name']}, {a['vocab_size']} tokens) differs from the target's "
                f"({b['name']}, {b['vocab_size']} tokens): a draft model must share the target's tokenizer"
            )
        return
    if target is not None:
        va, vb = _vocab_size(draft_model), _vocab_size(target)
        if va is not None and vb is not None and va != vb:
            raise TokenizerMismatch(
                f"the draft model's vocabulary has {va} tokens but the target's has {vb}: a draft model must share "
                "the target's tokenizer (pass tokenizer= and target_tokenizer= to compare the vocabularies themselves)"
            )


@dataclass
class _Growth:
    """One draft under construction, in the draft model's frame.

    The cache holds ``base`` committed tokens, then a *block* of fed entries: the rest of the committed tokens as
    a chain (the last one is the root) followed by tree nodes in the order they were fed. ``blk_*`` describe the
    block (parent entry, position offset from ``base``); ``node_blk[i]`` is tree node i's block entry or -1.
    """

    base: int
    chain: list[int] = field(default_factory=list)  # committed tokens fed in level 0 (the root last)
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    seed: list[bool] = field(default_factory=list)  # node came from a seed (retrieval) tree
    node_blk: list[int] = field(default_factory=list)
    children: list[dict] = field(default_factory=list)  # token -> node
    blk_parent: list[int] = field(default_factory=list)
    blk_pos: list[int] = field(default_factory=list)
    root_blk: int = 0
    model_hits: set = field(default_factory=set)  # seed nodes the draft model also proposed

    def add(self, token: int, parent: int, score: float, seed: bool = False) -> int:
        i = len(self.tokens)
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.scores.append(float(score))
        self.depths.append(0 if parent < 0 else self.depths[parent] + 1)
        self.seed.append(seed)
        self.node_blk.append(-1)
        self.children.append({})
        if parent >= 0:
            self.children[parent][int(token)] = i
        return i


class ModelDrafter(BaseDrafter):
    """Drafts with ``draft_model`` (an HF causal LM, or any callable taking ``input_ids, position_ids,
    attention_mask`` and the cache (under ``hf.compat.cache_keyword``'s name) and returning ``.logits``, like
    ``hf.layer_view.LayerSubsetModel``).

    Parameters
    ----------
    tokenizer, target_tokenizer: when both are given their vocabularies must match; ``target``: the target model,
        whose vocabulary size must match otherwise.
    topk: children proposed per expanded node; ``expand``: nodes expanded per level (default ``topk``);
    max_depth: deepest node (levels = draft passes); ``max_nodes``: most nodes returned (root included);
    min_score: frontier nodes whose cumulative draft probability is below this are not expanded.
    pass_cost: what one draft pass costs in target decoding steps (``None`` or 0: free). A further level is drafted
        only while the nodes it would expand could still earn that much: the sum of their cumulative draft
        probabilities bounds the tokens the level can add, and every accepted token saves about one target step.
        On a GPU a small drafter's pass is nearly free; on a CPU a layer-skipping drafter's pass costs almost a
        full step, and without this rule deep trees cost several steps' worth of draft passes.
    """

    name = "model"

    def __init__(self, draft_model, tokenizer=None, target_tokenizer=None, target=None, topk: int = 4,
                 expand: int | None = None, max_depth: int = 6, max_nodes: int = 48, min_score: float = 0.02,
                 name: str | None = None, pass_cost: float | None = None):
        check_same_vocabulary(draft_model, target, tokenizer, target_tokenizer)
        if topk < 1 or max_depth < 1:
            raise ValueError("topk and max_depth must be >= 1")
        self.model = draft_model
        self.layout = inspect_model(draft_model)
        param = next(draft_model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.topk = int(topk)
        self.expand = int(expand or topk)
        self.max_depth = int(max_depth)
        self.max_nodes = int(max_nodes)
        self.min_score = float(min_score)
        self.pass_cost = float(pass_cost or 0.0)
        if name:
            self.name = name
        self.passes = 0  # draft-model forward passes (for reports)
        self.fed = 0  # positions fed through the draft model
        self.begin(np.zeros(0, dtype=np.int64))

    # ------------------------------------------------------------------ cache bookkeeping
    def begin(self, prompt_ids: np.ndarray) -> None:
        self._cache = new_cache()
        self._cached = np.zeros(0, dtype=np.int64)  # committed tokens held by the cache, in order
        self._growth: _Growth | None = None
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        if len(prompt) > 1:
            with torch.inference_mode():
                self._catch_up(prompt, len(prompt) - 1)

    def _crop(self, length: int) -> None:
        with torch.inference_mode():
            keep_prefix_and(self._cache, length, torch.zeros(0, dtype=torch.long, device=self.device))
        self._cached = self._cached[:length]

    def _settle(self, context: np.ndarray) -> None:
        """Compact the cache after a draft: keep the committed block and the fed nodes the context confirms."""
        g = self._growth
        if g is None:
            return
        self._growth = None
        with torch.inference_mode():  # the cache tensors are inference tensors
            self._compact(g, context)

    def _compact(self, g: _Growth, context: np.ndarray) -> None:
        kept = list(range(g.root_blk + 1))  # the committed chain of the block, root included
        tokens = list(g.chain)
        node = 0
        # never keep the last committed token: it is the next root, whose logits level 0 must compute
        for tok in context[g.base + g.root_blk + 1: len(context) - 1]:
            nxt = g.children[node].get(int(tok))
            if nxt is None or g.node_blk[nxt] < 0:
                break
            node = nxt
            kept.append(g.node_blk[nxt])
            tokens.append(int(tok))
        keep_prefix_and(self._cache, g.base, torch.tensor(kept, dtype=torch.long, device=self.device))
        self._cached = np.concatenate([self._cached[: g.base], np.asarray(tokens, dtype=np.int64)])

    def _sync(self, context: np.ndarray) -> None:
        """Make the cache hold the longest prefix of ``context[:-1]`` it can keep."""
        self._settle(context)
        n = min(len(self._cached), len(context) - 1)
        same = self._cached[:n] == context[:n]
        lcp = n if same.all() else int(np.argmin(same))
        if lcp < len(self._cached):
            self._crop(lcp)

    def feedback(self, step: StepFeedback) -> None:
        self._settle(step.context)

    # ------------------------------------------------------------------ forward passes
    def _run(self, ids, positions, mask, logits_to_keep: int = 0) -> torch.Tensor:
        self.passes += 1
        self.fed += len(ids)
        out = self.model(
            input_ids=torch.as_tensor(ids, dtype=torch.long, device=self.device)[None],
            position_ids=torch.as_tensor(positions, dtype=torch.long, device=self.device)[None],
            attention_mask=mask,
            use_cache=True,
            **{cache_keyword(self.model): self._cache},
            logits_to_keep=logits_to_keep,
        )
        return out.logits[0]

    def _catch_up(self, context: np.ndarray, upto: int) -> None:
        """Feed committed tokens ``context[len(cached):upto]`` as causal chains of at most ``CHAIN_CHUNK``."""
        while len(self._cached) < upto:
            start = len(self._cached)
            chunk = context[start: min(upto, start + CHAIN_CHUNK)]
            n = len(chunk)
            mask = tree_attention_mask(self.layout, np.tril(np.ones((n, n), dtype=bool)), np.arange(n), start,
                                       self.dtype, self.device)
            self._run(chunk, np.arange(start, start + n), mask, logits_to_keep=1)
            self._cached = np.concatenate([self._cached, np.asarray(chunk, dtype=np.int64)])

    def _feed(self, g: _Growth, entries: list[tuple[int, int, int]], logits_to_keep: int) -> torch.Tensor:
        """Append block entries ``(token, parent entry, position offset)`` and return the last rows' log-probs."""
        start = len(g.blk_parent)
        for _, parent, pos in entries:
            g.blk_parent.append(parent)
            g.blk_pos.append(pos)
        anc = ancestor_matrix(g.blk_parent)
        depths = np.asarray(g.blk_pos, dtype=np.int64)
        mask = tree_attention_mask(self.layout, anc, depths, g.base, self.dtype, self.device)
        if isinstance(mask, dict):
            mask = {k: v[:, :, start:] for k, v in mask.items()}
        else:
            mask = mask[:, :, start:]
        logits = self._run([e[0] for e in entries], g.base + depths[start:], mask, logits_to_keep=logits_to_keep)
        return torch.log_softmax(logits[-logits_to_keep:].float(), dim=-1)

    # ------------------------------------------------------------------ drafting
    def draft(self, context: np.ndarray, budget: int) -> DraftTree:
        tree, _ = self.grow(context, budget)
        return tree

    @torch.inference_mode()
    def grow(self, context: np.ndarray, budget: int, seed: DraftTree | None = None,
             prune_below: float = 0.0) -> tuple[DraftTree, np.ndarray | None]:
        """Draft a tree; with ``seed`` (a tree rooted at ``context[-1]``, e.g. from retrieval) its nodes are fed in
        level 0 alongside the root, scored by the draft model, and grown from like the model's own nodes.

        A seed node whose draft probability given its parent is below ``prune_below`` is dropped with its subtree.
        Returns the tree (seed nodes carry the seed's source bits, model nodes ``self.name``) and, for a seed,
        float32[len(seed)] the draft model's cumulative probability of every seed node (0 where pruned).
        """
        context = np.asarray(context)
        budget = max(1, min(int(budget), self.max_nodes))
        self._sync(context)
        L = len(context)
        # catch up on long stretches first so the level-0 block stays small
        if L - 1 - len(self._cached) > CHAIN_CHUNK:
            self._catch_up(context, L - 1 - CHAIN_CHUNK // 2)
        base = len(self._cached)
        chain = [int(t) for t in context[base:L]]
        g = _Growth(base=base, chain=chain)
        entries = [(tok, j - 1, j) for j, tok in enumerate(chain)]
        g.root_blk = len(chain) - 1
        g.add(int(context[-1]), -1, 1.0)
        g.node_blk[0] = g.root_blk
        seed_nodes: list[int] = []
        if seed is not None and len(seed) > 1:
            if seed.root_token != int(context[-1]):
                raise ValueError("the seed tree must be rooted at the last context token")
            local = np.zeros(len(seed), dtype=np.int64)
            for i in range(1, len(seed)):
                parent = int(local[seed.parents[i]])
                node = g.add(int(seed.tokens[i]), parent, 0.0, seed=True)
                local[i] = node
                g.node_blk[node] = len(entries)
                entries.append((g.tokens[node], g.node_blk[parent], g.root_blk + g.depths[node]))
                seed_nodes.append(node)
        self._growth = g
        logp = self._feed(g, entries, logits_to_keep=1 + len(seed_nodes))
        rows = {0: logp[0]}
        for r, node in enumerate(seed_nodes, start=1):
            rows[node] = logp[r]

        seed_scores = None
        alive = [True] * len(g.tokens)
        if seed_nodes:
            for node in seed_nodes:  # topological: parents first
                parent = g.parents[node]
                cond = float(rows[parent][g.tokens[node]].exp()) if alive[parent] else 0.0
                alive[node] = alive[parent] and cond >= prune_below
                g.scores[node] = g.scores[parent] * cond if alive[node] else 0.0
            seed_scores = np.zeros(len(seed), dtype=np.float32)
            seed_scores[1:] = [g.scores[n] for n in seed_nodes]

        # ---- expansion: each pass feeds the best unfed nodes (by cumulative score) that could still make the budget
        rows = {n: row for n, row in rows.items() if alive[n]}
        for level in range(self.max_depth):
            for node, row in rows.items():
                if g.depths[node] >= self.max_depth:
                    continue
                top = torch.topk(row, min(self.topk, row.shape[-1]))
                for lp, tok in zip(top.values.tolist(), top.indices.tolist()):
                    score = g.scores[node] * float(np.exp(lp))
                    child = g.children[node].get(tok)
                    if child is None:
                        g.add(tok, node, score)
                        alive.append(True)
                    elif alive[child]:
                        g.scores[child] = max(g.scores[child], score)
                        g.model_hits.add(child)
            if level == self.max_depth - 1:
                break  # pass budget spent: children of a further pass could not be added
            scores = np.asarray(g.scores)
            live = scores[np.asarray(alive)]
            # a child never scores above its parent: a node at or below the budget-th best score cannot add a node
            cut = np.partition(live, len(live) - budget)[len(live) - budget] if len(live) >= budget else -1.0
            candidates = [n for n in range(len(g.tokens)) if alive[n] and g.node_blk[n] < 0
                          and g.depths[n] < self.max_depth and scores[n] >= self.min_score and scores[n] > cut]
            candidates = heapq.nlargest(self.expand, candidates, key=lambda n: scores[n])
            if not candidates or sum(scores[n] for n in candidates) < self.pass_cost:
                break
            entries = []
            for node in candidates:
                g.node_blk[node] = len(g.blk_parent) + len(entries)
                entries.append((g.tokens[node], g.node_blk[g.parents[node]], g.root_blk + g.depths[node]))
            logp = self._feed(g, entries, logits_to_keep=len(entries))
            rows = {node: logp[r] for r, node in enumerate(candidates)}
        alive = np.asarray(alive, dtype=bool)
        return self._to_tree(g, alive, seed).prune(budget), seed_scores

    def _to_tree(self, g: _Growth, alive: np.ndarray, seed: DraftTree | None) -> DraftTree:
        names = list(seed.source_names) if seed is not None else []
        if self.name not in names:
            names.append(self.name)
        model_bit = 1 << names.index(self.name)
        seed_masks = None
        if seed is not None and len(seed) > 1:
            seed_masks = np.zeros(len(g.tokens), dtype=np.uint32)
            seed_masks[1:len(seed)] = seed.source_mask[1:]
        keep = np.flatnonzero(alive)
        masks = np.zeros(len(g.tokens), dtype=np.uint32)
        for i in keep[1:]:
            bits = int(seed_masks[i]) if seed_masks is not None and g.seed[i] else 0
            if not g.seed[i] or i in g.model_hits:
                bits |= model_bit
            masks[i] = bits
        grown = DraftTree(np.asarray(g.tokens, dtype=np.int64), np.asarray(g.parents, dtype=np.int32),
                          np.asarray(g.scores, dtype=np.float32), masks, tuple(names))
        return grown.subset(keep)
