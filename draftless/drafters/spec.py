"""Drafter spec strings: ``ngram``, ``sam``, ``recycle``, ``sam+recycle``, ``sam:datastores/NAME``, ``auto`` ...

A spec is sources joined by ``+``; each source is ``KIND`` or ``KIND:ARGUMENT`` (a datastore directory or model
path). Several sources become one ``FusedDrafter``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..engine.protocol import Drafter, NullDrafter

FUSED_SPEC = "ngram+sam+recycle"
# A verification cost curve steeper than this at 8 tokens (t(8) / t(1)) makes every extra node expensive: there the
# suffix automaton alone beats the fused mix (the extra sources cost draft and feedback time and widen trees for
# little extra acceptance). Measured on a 2-core CPU: with MKL's few-row kernels (t(8)/t(1) 1.5-2.0) `sam` was
# ahead by 0-2%; with the skinny verification path (t(8)/t(1) 1.55-1.63 at one thread) the fused mix won on both
# shipped models (SmolLM2 chat 1.25x vs 1.19x, Gemma 3 raw 2.24x vs 2.11x, 26 dev prompts). Only curves steeper
# than that take `sam` alone.
STEEP_COST_AT_8 = 2.0
# A curve this flat at 16 tokens (t(16) / t(1), GPUs) makes a Jacobi window nearly free: there ``auto`` adds the
# ``lookahead`` source, which guesses where nothing repeats. On this 2-core CPU t(16)/t(1) is 1.6-1.9 and the window
# did not pay (docs/benchmarks.md, "Lookahead").
FLAT_COST_AT_16 = 1.2


def _curve(model):
    """The model's measured verification cost curve (measured once per model and device, then cached)."""
    from ..engine.cost_curve import cost_curve_for
    from ..hf.attention import inspect_model

    return cost_curve_for(model, inspect_model(model, chains_ok=True))  # a curve is measured on chains


def _steep(model, curve=None) -> bool:
    curve = curve if curve is not None else _curve(model)
    return curve.cost(8) / curve.cost(1) > STEEP_COST_AT_8


def auto_spec(model, draft_model: str | None = None, curve=None) -> str:
    """What ``auto`` means for this model on this device: ``sam`` on steep cost curves, else the fused mix, with the
    ``lookahead`` source added on flat ones (t(16)/t(1) <= ``FLAT_COST_AT_16``).

    With a model drafter configured (``draft_model``: ``"self"``, a path or a shipped name) it is combined with
    retrieval: on steep curves by selection (``select:``, the model drafts only where retrieval is weak: measured
    faster than fusion on a 2-core CPU, see docs/benchmarks.md, "Model drafters"), on flat curves by fusion
    (``hybrid:``, where a wider tree is nearly free). ``curve``: a ``CostCurve`` to judge by instead of the model's
    measured one."""
    steep = _steep(model, curve)
    if draft_model:
        draft = draft_model if draft_model == "self" or draft_model.startswith("self:") else f"model:{draft_model}"
        return f"{'select' if steep else 'hybrid'}:{draft}"
    if steep:
        return "sam"
    curve = curve if curve is not None else _curve(model)
    return f"{FUSED_SPEC}+lookahead" if curve.cost(16) / curve.cost(1) <= FLAT_COST_AT_16 else FUSED_SPEC


@dataclass
class DrafterContext:
    """What factories may need: the target model (vocab size, device) and its tokenizer (datastore identity)."""

    model: object
    tokenizer: object | None = None
    history: object | None = None  # a HistoryStore: ``history`` sources read it, and ``auto`` then includes one
    # the default history (``accelerate(history="auto")``): only requests that name a namespace read and extend it,
    # and ``auto`` includes it only where auto is already a fusion (so a request without one drafts as before)
    history_namespaced_only: bool = False


def _named(kind: str, arg: str | None) -> str | None:
    """``rest:datastores/mbpp-rest-m`` -> ``"rest:mbpp-rest-m"``: a sourced drafter named by its store or model, so
    two of a kind fuse under distinct names (None without an argument: the class name stands). The sam drafter
    is not renamed: it names its store's nodes itself and its dynamic nodes stay "sam"."""
    return f"{kind}:{arg.rstrip('/').split('/')[-1]}" if arg else None


def _ngram(arg, ctx):
    from .ngram import NGramDrafter

    return NGramDrafter()


def _sam(arg, ctx):
    from .sam import SamDrafter

    return SamDrafter(store_path=arg, tokenizer=ctx.tokenizer) if arg else SamDrafter()


def _rest(arg, ctx):
    from .rest import RestDrafter

    if not arg:
        raise ValueError("'rest:DIR' needs a datastore directory built with `draftless build --kind rest`")
    return RestDrafter(arg, tokenizer=ctx.tokenizer, name=_named("rest", arg))


def _dense(arg, ctx):
    """``dense:DIR`` (a dense store plus the session's own verified states) or ``dense`` (session states only)."""
    from .dense import DenseDrafter

    return DenseDrafter(arg or None, tokenizer=ctx.tokenizer, model=ctx.model, online=True, name=_named("dense", arg))


def _recycle(arg, ctx):
    from .recycle import RecycleDrafter

    return RecycleDrafter.for_model(ctx.model)


def _history(arg, ctx):
    """``history`` (the context's store, else a fresh in-memory one) | ``history:DIR`` (a store kept in DIR)."""
    from .history import HistoryDrafter, history_store_for

    # The store lands in the context, so every drafter later built from it (one per batch row) shares it.
    if ctx.history is None:
        ctx.history = history_store_for(arg or True, ctx.tokenizer)
    elif arg:
        raise ValueError(f"'history:{arg}' given while a history is already configured (history=...): use one")
    return HistoryDrafter(ctx.history, namespaced_only=ctx.history_namespaced_only)


def _lookahead(arg, ctx):
    """``lookahead`` (window width from the measured cost curve) | ``lookahead:W`` (a window of W tokens)."""
    from .lookahead import LookaheadDrafter, window_for_curve

    if arg:
        try:
            window = int(arg)
        except ValueError:
            raise ValueError(f"'lookahead:{arg}': the argument is the Jacobi window width, an integer") from None
        if window < 1:
            raise ValueError(f"'lookahead:{arg}': the window needs at least 1 token")
    else:
        window = window_for_curve(_curve(ctx.model))
    return LookaheadDrafter(window=window)


def _none(arg, ctx):
    return NullDrafter()


def _model(arg, ctx):
    """``model:PATH``: a smaller causal LM with the target's tokenizer (HF folder, .gguf or shipped name)."""
    from ..hf.loading import load_model
    from .model_drafter import ModelDrafter

    if not arg:
        raise ValueError("'model:PATH' needs a draft model: a local HF folder, a .gguf file or a shipped model name")
    draft, draft_tokenizer = load_model(arg)
    # a draft pass costs about the draft model's share of the target's parameters (both run the same kernels)
    pass_cost = sum(p.numel() for p in draft.parameters()) / sum(p.numel() for p in ctx.model.parameters())
    return ModelDrafter(draft, tokenizer=draft_tokenizer, target_tokenizer=ctx.tokenizer, target=ctx.model,
                        pass_cost=pass_cost, name=_named("model", arg))


def _self(arg, ctx):
    """``self`` | ``self:17,25`` | ``self:20-``: the target with layers skipped (argument: layers to skip)."""
    from .self_spec import SelfSpecDrafter

    return SelfSpecDrafter(ctx.model, skip_layers=arg, tokenizer=ctx.tokenizer)


def _grammar(arg, ctx):
    """``grammar``: the tree the request's grammar forces (root-only without one; see ``drafters/grammar.py``)."""
    from .grammar import GrammarDrafter

    return GrammarDrafter()


def _select(arg, ctx):
    """``select:self`` | ``select:model:PATH``: the model drafter only when the retrieval mix is weak."""
    from .hybrid import SelectiveDrafter

    return SelectiveDrafter(build_drafter(FUSED_SPEC, ctx), build_drafter(arg or "self", ctx))


def _hybrid(arg, ctx):
    """``hybrid:self`` | ``hybrid:model:PATH``: retrieval trees re-scored, pruned and extended by a model drafter."""
    from .hybrid import HybridFusion

    return HybridFusion(build_drafter("ngram+sam", ctx), build_drafter(arg or "self", ctx))


FACTORIES: dict[str, Callable[[str | None, DrafterContext], Drafter]] = {
    "ngram": _ngram,
    "sam": _sam,
    "recycle": _recycle,
    "rest": _rest,
    "dense": _dense,
    "none": _none,
    "lookahead": _lookahead,
    "history": _history,
    "model": _model,
    "self": _self,
    "select": _select,
    "hybrid": _hybrid,
    "grammar": _grammar,
}

# Kinds whose argument is itself a spec: everything after the first ':' belongs to them, '+' included.
NESTING_KINDS = ("select", "hybrid")


def available_kinds() -> list[str]:
    return sorted(FACTORIES) + ["auto"]


def parse_spec(spec: str) -> list[tuple[str, str | None]]:
    """``"sam:datastores/x+recycle"`` -> ``[("sam", "datastores/x"), ("recycle", None)]``."""
    if not spec or not spec.strip():
        raise ValueError("empty drafter spec")
    kind0, _, rest = spec.strip().partition(":")
    if kind0.strip().lower() in NESTING_KINDS:
        return [(kind0.strip().lower(), rest.strip() or None)]
    parts = []
    for raw in spec.split("+"):
        raw = raw.strip()
        kind, _, arg = raw.partition(":")
        kind = kind.strip().lower()
        if not kind:
            raise ValueError(f"malformed drafter spec {spec!r}")
        parts.append((kind, arg.strip() or None))
    return parts


def with_history(spec: str) -> str:
    """``spec`` with a ``history`` source: as it is when it names one or is ``auto`` (which adds one itself)."""
    parts = parse_spec(spec)
    if parts[0][0] in NESTING_KINDS:
        raise ValueError(f"a history cannot join {spec!r}: use a fused spec (e.g. 'auto', 'sam+history')")
    return spec if any(kind in ("history", "auto") for kind, _ in parts) else f"{spec}+history"


def datastore_kind(path: str) -> str:
    """The kind of the store at ``path`` (``draftless.stores.sharded.store_kind``), refused unless ``auto`` can add
    it as a source."""
    from ..stores.sharded import store_kind

    kind = store_kind(path)
    if kind not in ("sam", "rest", "dense"):
        raise ValueError(f"auto cannot use the {kind!r} store at {path}; build a sam, rest or dense store")
    return kind


def build_drafter(spec: str, ctx: DrafterContext, datastore: str | None = None,
                  draft_model: str | None = None) -> Drafter:
    """Instantiate the drafter a spec names. ``datastore``: a store directory that ``auto`` adds as a source;
    ``draft_model``: a model drafter (``"self"``, a path, a shipped name) that ``auto`` combines with retrieval."""
    from .fusion import FusedDrafter
    from .grammar import GrammarGuard

    if draft_model and spec.strip().lower() == "auto":
        return GrammarGuard(build_drafter(auto_spec(ctx.model, draft_model), ctx))
    parts = parse_spec(spec)
    store = datastore_kind(datastore) if datastore else None
    expanded: list[tuple[str, str | None]] = []
    for kind, arg in parts:
        if kind == "auto":
            auto_parts = parse_spec(auto_spec(ctx.model))
            for auto_kind, auto_arg in auto_parts:
                # a sam store joins through the sam source, which then matches both the context and the corpus
                expanded.append((auto_kind, datastore if auto_kind == "sam" and store == "sam" else auto_arg))
            if store in ("rest", "dense"):  # a retrieval store is a source of its own, fused with auto's
                expanded.append((store, datastore))
            # a configured history is a source of auto's; the default one only joins a fusion (a lone source
            # fused with a silent history would be calibrated differently, so it would not draft as before)
            if (ctx.history is not None and all(k != "history" for k, _ in parts)
                    and (len(auto_parts) > 1 or not ctx.history_namespaced_only)):
                expanded.append(("history", None))
        else:
            expanded.append((kind, arg))
    drafters = []
    for kind, arg in expanded:
        factory = FACTORIES.get(kind)
        if factory is None:
            raise ValueError(f"unknown drafter kind {kind!r} in {spec!r}; known: {', '.join(available_kinds())}")
        drafters.append(factory(arg, ctx))
    drafter = drafters[0] if len(drafters) == 1 else FusedDrafter(drafters)
    # ``auto`` follows a request's grammar: forbidden drafts dropped, forced tokens drafted (inert without one)
    return GrammarGuard(drafter) if any(kind == "auto" for kind, _ in parts) else drafter
