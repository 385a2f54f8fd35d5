"""What the engine must know about a model's attention, checked once before any work is done.

Tree verification hands the unmodified model a custom 4-D additive mask plus explicit ``position_ids``. That needs
an attention implementation that adds the mask to the scores (``eager``, ``sdpa``), a decoder with a KV cache of
keys/values (not a recurrent state), and to know which layers use a sliding window: transformers takes, for models
with ``config.layer_types``, a dict of masks keyed by layer type, and otherwise one mask.

``GroupedQueryAttention`` makes a tree pass cheaper on models with grouped-query attention (fewer key/value heads
than query heads): transformers' ``sdpa`` attention, given a mask and more than one query, copies every cached key
and value once per query head sharing it (``repeat_kv``), a copy that grows with the context; during a tree pass the
engine switches the model to ``grouped_sdpa_attention``, registered through transformers' public
``AttentionInterface``, which folds each group's queries into one head instead and runs the same attention.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .compat import attn_implementation, is_stateful, set_attn_implementation

SUPPORTED_ATTENTION = ("eager", "sdpa")
SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


class UnsupportedModel(ValueError):
    """The model cannot be verified with a tree mask; the message says why and what to do."""


@dataclass(frozen=True)
class AttentionLayout:
    """``layer_types``: the distinct layer types (None when the config has no ``layer_types``: one mask for all);
    ``sliding_window``: window size of sliding layers (or of every layer when ``layer_types`` is None), else None."""

    layer_types: tuple[str, ...] | None
    sliding_window: int | None


def inspect_model(model) -> AttentionLayout:
    """Validate ``model`` for tree verification and describe its attention layout."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel("encoder-decoder models are not supported: draftless accelerates decoder-only causal LMs")
    if is_stateful(model):
        raise UnsupportedModel(
            f"{type(model).__name__} keeps a recurrent state that cannot be rolled back to an accepted tree path; "
            "draftless supports attention models with a key/value cache"
        )
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
        return AttentionLayout(layer_types=kinds, sliding_window=int(window) if window else None)
    # Models without layer_types but with a sliding window (Mistral-style) apply it in every layer.
    return AttentionLayout(layer_types=None, sliding_window=int(window) if window else None)


# ---------------------------------------------------------------------------- grouped-query attention for tree passes
GROUPED_SDPA = "draftless_grouped_sdpa"
# attention keywords whose meaning grouped_sdpa_attention does not reproduce: such calls go to sdpa as they are
_KEYWORDS_LEFT_TO_SDPA = ("softcap", "position_bias", "s_aux", "sinks")


def grouped_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs):
    """transformers' ``sdpa`` attention without its copy of the keys and values per query head.

    query: float [B, H, n, D]; key, value: float [B, Hkv, L, D] (H = g * Hkv, query head h reads key/value head
    h // g, transformers' ``repeat_kv`` order); attention_mask: additive or bool [B or 1, 1 or H, n, L]. The g query
    heads of a group become g * n query rows of one head, each row with its own copy of its mask row, and SDPA runs
    once per key/value head: every score is the same dot product as before, only the copy of [B, H, L, D] keys and
    values is gone. Returns (float [B, n, H, D], None), as ``sdpa`` does. Calls it does not fold (one query, no mask,
    no groups, or keywords it does not reproduce) go to ``sdpa`` unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    batch, heads, n, dim = query.shape
    folds = (groups > 1 and n > 1 and heads == key.shape[1] * groups
             and attention_mask is not None and attention_mask.dim() == 4
             and attention_mask.shape[1] in (1, heads) and attention_mask.shape[2] == n
             and all(kwargs.get(k) is None for k in _KEYWORDS_LEFT_TO_SDPA))
    if not folds:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    kv_heads, folded = key.shape[1], query.reshape(batch, key.shape[1], groups * n, dim)
    rows, keys = attention_mask.shape[0], attention_mask.shape[-1]
    if attention_mask.shape[1] == 1:  # one mask for every head: each of a group's heads gets its copy of the rows
        mask = attention_mask[:, :, None].expand(rows, 1, groups, n, keys).reshape(rows, 1, groups * n, keys)
    else:  # a mask per query head: a group's heads are consecutive, so it folds like the queries
        mask = attention_mask.reshape(rows, kv_heads, groups * n, keys)
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.reshape(batch, heads, n, dim).transpose(1, 2).contiguous(), None


def _register_grouped_sdpa() -> None:
    """Make ``GROUPED_SDPA`` a name transformers' attention (and mask) dispatch knows; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
    AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)  # a forward that builds its own mask gets sdpa's


def _has_grouped_queries(model) -> bool:
    """True for a transformers model with fewer key/value heads than query heads (False for anything else)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return False
    config = config.get_text_config(decoder=True)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None)
    return bool(heads and kv_heads and kv_heads < heads)


class GroupedQueryAttention:
    """Per model: ``context()`` runs a forward (a tree pass) on ``grouped_sdpa_attention`` where that helps, i.e. on a
    model with grouped-query attention whose implementation is ``sdpa``; elsewhere it changes nothing. Switching is
    an attribute write on the config (restored on exit), so it is done per pass and nothing outside the pass (a
    prefill, the user's own calls) sees it. Not thread-safe, like the engine that owns it."""

    def __init__(self, model):
        self.model = model
        self.applies = _has_grouped_queries(model)
        if self.applies:
            _register_grouped_sdpa()

    @contextlib.contextmanager
    def context(self):
        if not self.applies or attn_implementation(self.model) != "sdpa":
            yield
            return
        set_attn_implementation(self.model, GROUPED_SDPA)
        try:
            yield
        finally:
            set_attn_implementation(self.model, "sdpa")


def tree_attention_mask(
    layout: AttentionLayout,
    ancestor_mask: np.ndarray,
    depths: np.ndarray,
    prefix_len: int,
    dtype: torch.dtype,
    device: torch.device,
):
    """The attention mask(s) for verifying a tree of n nodes after ``prefix_len`` cached positions.

    ``ancestor_mask``: bool[n, n] (node i sees node j iff j is i or an ancestor); ``depths``: int[n].
    Returns an additive float mask of shape [1, 1, n, prefix_len + n] (0 = attend, dtype minimum = blocked), or for
    models with ``layer_types`` a dict ``{layer_type: mask}``. Node i sits at position ``prefix_len + depths[i]``;
    a sliding-window layer additionally blocks keys whose position is ``window`` or more behind the query's.
    """
    n = ancestor_mask.shape[0]
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
    depth_t = torch.from_numpy(np.asarray(depths, dtype=np.int64)).to(device)
    query_pos = prefix_len + depth_t
    key_pos = torch.cat([torch.arange(prefix_len, device=device), query_pos])
    in_window = key_pos[None, :] > query_pos[:, None] - layout.sliding_window
    sliding = additive(allowed & in_window)
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


def padded_prefill_mask(layout: AttentionLayout, starts: torch.Tensor, length: int, dtype: torch.dtype):
    """Mask(s) and ``position_ids`` int64 [B, length] for a causal pass over a left-padded batch: row b's tokens
    are the slots [starts[b], length), at positions 0, 1, ... (transformers' ``cumsum(mask) - 1``).

    ``starts``: int64 [B] (the rows' padding lengths). A padding query sees only itself (its output is never read,
    and its key is never seen by a real token)."""
    slots = torch.arange(length, device=starts.device)
    real = slots[None, :] >= starts[:, None]  # [B, length]
    causal = slots[None, :] <= slots[:, None]  # [length(query), length(key)]
    allowed = causal[None] & real[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=starts.device)[None]
    positions = (slots[None, :] - starts[:, None]).clamp_min(0)
    return ragged_attention_mask(layout, allowed, positions, positions, dtype), positions


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
