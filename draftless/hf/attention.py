"""What the engine must know about a model's attention, checked once before any work is done.

Tree verification hands the unmodified model a custom 4-D additive mask plus explicit ``position_ids``. That needs
an attention implementation that adds the mask to the scores (``eager``, ``sdpa``), a decoder with a KV cache of
keys/values (not a recurrent state), and to know which layers use a sliding window: transformers takes, for models
with ``config.layer_types``, a dict of masks keyed by layer type, and otherwise one mask.

Nothing here changes the user's model or config: a tree pass is an ordinary forward with a mask, so a plain
``model.generate`` in another thread at the same moment runs as it always does. (An earlier version switched the
config's attention implementation to a grouped-query SDPA for the pass, which another thread could see; it was
removed for that reason.)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .compat import attn_implementation, is_stateful

SUPPORTED_ATTENTION = ("eager", "sdpa")
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


class UnsupportedModel(ValueError):
    """The model cannot be verified with a tree mask; the message says why and what to do."""


@dataclass(frozen=True)
class AttentionLayout:
    """``layer_types``: the distinct layer types (None when the config has no ``layer_types``: one mask for all);
    ``sliding_window``: window size of sliding layers (or of every layer when ``layer_types`` is None), else None;
    ``chain_only``: why the model can verify only chains (one path per pass), in words, or None when it takes
    trees. An ALiBi model builds its position biases from the keys' order and a 2-D padding mask, so it takes no
    tree mask; a chain's nodes sit at positions equal to their order, and its forward with a 2-D mask of ones
    (what ``model.generate`` passes) is exact. ``sliding_layers``: the indices of the layers that attend through
    ``sliding_window`` (every layer when the window applies to all), the layers whose cache entries a pass may
    hand out windowed (``window_start``)."""

    layer_types: tuple[str, ...] | None
    sliding_window: int | None
    chain_only: str | None = None
    sliding_layers: tuple[int, ...] = ()


def uses_alibi(model) -> str | None:
    """How ``model`` applies ALiBi position biases, in words (None when it does not): Bloom and MPT always do,
    Falcon with ``alibi=True``, any config with ``position_embedding_type="alibi"``."""
    config = model.config.get_text_config(decoder=True)
    model_type = getattr(config, "model_type", "")
    if model_type == "bloom":
        return "bloom: ALiBi in every layer"
    if model_type == "mpt":
        attn_config = getattr(config, "attn_config", None)
        if getattr(attn_config, "alibi", True):
            return "mpt: attn_config.alibi"
    if getattr(config, "alibi", False) is True:
        return f"{model_type}: alibi=True"
    if getattr(config, "position_embedding_type", None) == "alibi":
        return f"{model_type}: position_embedding_type='alibi'"
    return None


def inspect_model(model, chains_ok: bool = False) -> AttentionLayout:
    """Validate ``model`` for tree verification and describe its attention layout. ``chains_ok``: the caller can
    verify chains alone (the engine can; a drafter that grows trees on the model cannot), so an ALiBi model gets a
    layout with ``chain_only`` set instead of an ``UnsupportedModel``."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel("encoder-decoder models are not supported: "
                               "draftless accelerates decoder-only causal LMs")
    if is_stateful(model):
        raise UnsupportedModel(
            f"{type(model).__name__} keeps a recurrent state that cannot be rolled back to an accepted tree path; "
            "draftless supports attention models with a key/value cache"
        )
    alibi = uses_alibi(model)
    if alibi and not chains_ok:
        raise UnsupportedModel(
            f"{type(model).__name__} ({alibi}) adds ALiBi position biases that its forward builds from a 2-D "
            "padding mask and the keys' order, not from position_ids, so a tree node cannot be given its tree "
            "position (prefix + depth): this use needs trees on the model (a draft model or the target with "
            "layers skipped); accelerate() verifies ALiBi models one draft chain per pass, with context and "
            "corpus drafters")
    impl = attn_implementation(model)
    if impl not in SUPPORTED_ATTENTION:
        raise UnsupportedModel(
            f"attention implementation {impl!r} cannot take a custom tree mask; load the model with "
            "attn_implementation='sdpa' (or 'eager')"
        )
    text_config = config.get_text_config(decoder=True)
    layer_types = getattr(text_config, "layer_types", None)
    window = getattr(text_config, "sliding_window", None)
    if layer_types is not None:
        kinds = tuple(dict.fromkeys(layer_types))
        unknown = [k for k in kinds if k not in SUPPORTED_LAYER_TYPES]
        if unknown:
            raise UnsupportedModel(f"layer types {unknown} are not supported (only {SUPPORTED_LAYER_TYPES})")
        if "sliding_attention" not in kinds:
            window = None
        sliding = tuple(i for i, kind in enumerate(layer_types) if kind == "sliding_attention") if window else ()
        return AttentionLayout(layer_types=kinds, sliding_window=int(window) if window else None, chain_only=alibi,
                               sliding_layers=sliding)
    # Models without layer_types but with a sliding window (Mistral-style) apply it in every layer.
    layers = getattr(text_config, "num_hidden_layers", None)
    sliding = tuple(range(int(layers))) if window and isinstance(layers, int) else ()
    return AttentionLayout(layer_types=None, sliding_window=int(window) if window else None, chain_only=alibi,
                           sliding_layers=sliding)


def learned_position_table(model) -> int | None:
    """How many positions the model can hold at all: the rows of its learned absolute position embedding (GPT-2's
    ``wpe``, OPT's ``embed_positions``, ...) or of MPT's precomputed ALiBi table (``config.max_seq_len``); None for
    a model without such a table (rotary, Bloom/Falcon ALiBi: positions past the trained range still compute)."""
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("wpe", "embed_positions", "position_embeddings") and isinstance(module, torch.nn.Embedding):
            return int(module.num_embeddings)
    config = model.config.get_text_config(decoder=True)
    if getattr(config, "model_type", "") == "mpt" and isinstance(getattr(config, "max_seq_len", None), int):
        return int(config.max_seq_len)
    return None


def check_position_limit(model, prompt_len: int, max_length: int) -> None:
    """Before any work: a prompt (``prompt_len`` tokens, padding included) that a learned position table cannot
    hold is refused with a ``ValueError`` (the model would fail with an ``IndexError`` inside its embedding); a run
    whose ``max_length`` passes the config's ``max_position_embeddings`` gets the warning transformers gives, as
    output there is past what the model was trained on."""
    table = learned_position_table(model)
    if table is not None and prompt_len > table:
        raise ValueError(f"the prompt holds {prompt_len} tokens but {type(model).__name__} has learned positions "
                         f"for {table} only; shorten the prompt")
    config = model.config.get_text_config(decoder=True)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        warnings.warn(f"this generation may reach {max_length} tokens, past the model's max_position_embeddings "
                      f"({limit}): output beyond it may degrade (and a learned position table ends there)",
                      UserWarning, stacklevel=3)


def window_start(layout: AttentionLayout, prefix_len: int, min_depth: int = 0) -> int:
    """The first cached position that a query at ``prefix_len + min_depth`` or later can see through the sliding
    window (keys less than ``window`` positions behind it): every position before it is blocked for every node of a
    pass at ``prefix_len``, in every sliding layer. 0 for a model without a window (or a prefix inside it)."""
    if not layout.sliding_window:
        return 0
    return max(0, prefix_len + int(min_depth) - layout.sliding_window + 1)


def tree_attention_mask(
    layout: AttentionLayout,
    ancestor_mask: np.ndarray,
    depths: np.ndarray,
    prefix_len: int,
    dtype: torch.dtype,
    device: torch.device,
    sliding_from: int = 0,
):
    """The attention mask(s) for verifying a tree of n nodes after ``prefix_len`` cached positions.

    ``ancestor_mask``: bool[n, n] (node i sees node j iff j is i or an ancestor); ``depths``: int[n].
    Returns an additive float mask of shape [1, 1, n, prefix_len + n] (0 = attend, dtype minimum = blocked), or for
    models with ``layer_types`` a dict ``{layer_type: mask}``. Node i sits at position ``prefix_len + depths[i]``;
    a sliding-window layer additionally blocks keys whose position is ``window`` or more behind the query's.

    ``sliding_from``: the sliding layers' mask leaves out its first ``sliding_from`` columns, for a pass whose
    sliding layers are handed the keys from that position on only (``kv_cache.windowed_views``); at most
    ``window_start(layout, prefix_len, min(depths))``, so that only columns blocked for every node are left out.

    A ``chain_only`` layout takes chains alone (``ancestor_mask`` lower-triangular, ``depths`` 0..n-1) and gets the
    2-D int64 mask of ones [1, prefix_len + n] that ``model.generate`` passes: the model's forward then builds the
    causal mask and its ALiBi biases itself, from key order, which for a chain is the tree position.
    """
    n = ancestor_mask.shape[0]
    if layout.chain_only is not None:
        if not (np.array_equal(ancestor_mask, np.tril(np.ones((n, n), dtype=bool)))
                and np.array_equal(np.asarray(depths), np.arange(n))):
            raise ValueError(f"this model verifies chains only ({layout.chain_only}); got a tree of {n} nodes "
                             "with branches")
        return torch.ones(1, prefix_len + n, dtype=torch.int64, device=device)
    depths = np.asarray(depths, dtype=np.int64)
    if sliding_from and not 0 <= sliding_from <= window_start(layout, prefix_len, int(depths.min())):
        raise ValueError(f"sliding_from={sliding_from} would leave out keys a node of this tree sees (prefix "
                         f"{prefix_len}, window {layout.sliding_window})")
    tree_part = torch.from_numpy(ancestor_mask).to(device)
    allowed = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool, device=device), tree_part], dim=1)
    blocked_value = torch.finfo(dtype).min

    def additive(allow: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allow.shape, dtype=dtype, device=device)
        mask.masked_fill_(~allow, blocked_value)
        return mask[None, None]

    full = additive(allowed)
    if layout.sliding_window is None:
        if layout.layer_types is None:
            return full
        return {kind: full for kind in layout.layer_types}
    depth_t = torch.from_numpy(depths).to(device)
    query_pos = prefix_len + depth_t
    key_pos = torch.cat([torch.arange(sliding_from, prefix_len, device=device), query_pos])
    in_window = key_pos[None, :] > query_pos[:, None] - layout.sliding_window
    sliding = additive(allowed[:, sliding_from:] & in_window)
    if layout.layer_types is None:
        return sliding
    return {kind: (sliding if kind == "sliding_attention" else full) for kind in layout.layer_types}


# ---------------------------------------------------------------------------- batches with ragged rows
# A batch shares one cache whose slots hold different rows' entries at different places: row b's committed
# entries are the slots [start[b], end[b]) (left padding before them, garbage from rejected or shorter rows after
# them), so every row gets its own positions and its own visible keys. These builders say, per row, which keys a
# query may see and where each key sits; ``ragged_attention_mask`` turns that into transformers' additive masks.


def ragged_attention_mask(layout: AttentionLayout, allowed: torch.Tensor, query_pos: torch.Tensor,
                          key_pos: torch.Tensor, dtype: torch.dtype):
    """Additive mask(s) for a batch whose rows sit at positions of their own.

    ``allowed``: bool [B, n, K] (query i of row b may see key slot j, before any sliding window; every query must
    see at least one key, or its softmax has no support); ``query_pos``: int64 [B, n]; ``key_pos``: int64 [B, K]
    (read only where ``allowed``). Returns float ``dtype`` [B, 1, n, K] (0 = attend, dtype minimum = blocked), or a
    dict ``{layer_type: mask}`` for models with ``layer_types``; a sliding-window layer also blocks keys
    ``window`` or more positions behind the query."""
    blocked_value = torch.finfo(dtype).min

    def additive(allow: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allow.shape, dtype=dtype, device=allow.device)
        mask.masked_fill_(~allow, blocked_value)
        return mask[:, None]

    full = additive(allowed)
    if layout.sliding_window is None:
        return full if layout.layer_types is None else {kind: full for kind in layout.layer_types}
    in_window = key_pos[:, None, :] > query_pos[:, :, None] - layout.sliding_window
    sliding = additive(allowed & in_window)
    if layout.layer_types is None:
        return sliding
    return {kind: (sliding if kind == "sliding_attention" else full) for kind in layout.layer_types}


def cut_sliding_mask(layout: AttentionLayout, masks, limit: int):
    """``(masks, cut)``: ``masks`` (what ``ragged_attention_mask`` returns) with the sliding layers' mask less its
    first ``cut`` key columns, ``cut`` being how many leading columns (at most ``limit``: the cached slots) that mask
    blocks for every query of every row; ``(masks, 0)`` unchanged for a model without a sliding window. The pass
    must then hand its sliding layers the keys from slot ``cut`` on (``kv_cache.windowed_views``)."""
    if layout.sliding_window is None or layout.chain_only is not None:
        return masks, 0
    sliding = masks["sliding_attention"] if isinstance(masks, dict) else masks
    seen = (sliding[..., :limit] == 0).flatten(0, -2).any(dim=0)  # [limit]: a key column some query sees
    cut = int(seen.to(torch.int8).argmax()) if bool(seen.any()) else int(limit)
    if cut == 0:
        return masks, 0
    if not isinstance(masks, dict):
        return masks[..., cut:], cut
    return {kind: (m[..., cut:] if kind == "sliding_attention" else m) for kind, m in masks.items()}, cut


def padded_prefill_mask(layout: AttentionLayout, starts: torch.Tensor, length: int, dtype: torch.dtype,
                        first: int = 0):
    """Mask(s) and ``position_ids`` int64 [B, length - first] for a causal pass over a left-padded batch: row b's
    tokens are the slots [starts[b], length), at positions 0, 1, ... (transformers' ``cumsum(mask) - 1``); the pass
    computes the queries of slots [first, length) (a chunk, the slots before it already cached) over the keys of
    slots [0, length).

    ``starts``: int64 [B] (the rows' padding lengths). A padding query sees only itself (its output is never read,
    and its key is never seen by a real token)."""
    slots = torch.arange(length, device=starts.device)
    queries = slots[first:]
    real = slots[None, :] >= starts[:, None]  # [B, length]
    causal = slots[None, :] <= queries[:, None]  # [length - first (query), length (key)]
    allowed = causal[None] & real[:, None, :]
    allowed |= (slots[None, :] == queries[:, None])[None]
    positions = (slots[None, :] - starts[:, None]).clamp_min(0)
    return ragged_attention_mask(layout, allowed, positions[:, first:], positions, dtype), positions[:, first:]


def batch_tree_mask(layout: AttentionLayout, ancestors: torch.Tensor, depths: torch.Tensor, starts: torch.Tensor,
                    ends: torch.Tensor, width: int, dtype: torch.dtype):
    """Mask(s) and ``position_ids`` int64 [B, n] for verifying one tree per row after a shared cache of ``width``
    slots, row b's committed entries being the slots [starts[b], ends[b]).

    ``ancestors``: bool [B, n, n] (a row's tree padded to n nodes: a padding node sees only itself); ``depths``:
    int64 [B, n]. Node i of row b sits at position ``ends[b] - starts[b] + depths[b, i]``."""
    batch, n = depths.shape
    slots = torch.arange(width, device=depths.device)
    cached = (slots[None, :] >= starts[:, None]) & (slots[None, :] < ends[:, None])  # [B, width]
    query_pos = (ends - starts)[:, None] + depths
    key_pos = torch.cat([slots[None, :] - starts[:, None], query_pos], dim=1)
    allowed = torch.cat([cached[:, None, :].expand(batch, n, width), ancestors], dim=2)
    return ragged_attention_mask(layout, allowed, query_pos, key_pos, dtype), query_pos
