"""Drafter spec strings: ``ngram``, ``sam``, ``recycle``, ``sam+recycle``, ``sam:datastores/NAME``, ``auto`` ...

A spec is sources joined by ``+``; each source is ``KIND`` or ``KIND:ARGUMENT`` (a datastore directory or model
path). Several sources become one ``FusedDrafter``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .drafter import Drafter, NullDrafter

AUTO_SPEC = "ngram+sam+recycle"


@dataclass
class DrafterContext:
    """What factories may need: the target model (vocab size, device) and its tokenizer (datastore identity)."""

    model: object
    tokenizer: object | None = None


def _ngram(arg, ctx):
    from .drafters.ngram import NGramDrafter

    return NGramDrafter()


def _sam(arg, ctx):
    from .drafters.sam import SamDrafter

    return SamDrafter(store_path=arg, tokenizer=ctx.tokenizer) if arg else SamDrafter()


def _recycle(arg, ctx):
    from .drafters.recycle import RecycleDrafter

    return RecycleDrafter.for_model(ctx.model)


def _none(arg, ctx):
    return NullDrafter()


FACTORIES: dict[str, Callable[[str | None, DrafterContext], Drafter]] = {
    "ngram": _ngram,
    "sam": _sam,
    "recycle": _recycle,
    "none": _none,
}


def available_kinds() -> list[str]:
    return sorted(FACTORIES) + ["auto"]


def parse_spec(spec: str) -> list[tuple[str, str | None]]:
    """``"sam:datastores/x+recycle"`` -> ``[("sam", "datastores/x"), ("recycle", None)]``."""
    if not spec or not spec.strip():
        raise ValueError("empty drafter spec")
    parts = []
    for raw in spec.split("+"):
        raw = raw.strip()
        kind, _, arg = raw.partition(":")
        kind = kind.strip().lower()
        if not kind:
            raise ValueError(f"malformed drafter spec {spec!r}")
        parts.append((kind, arg.strip() or None))
    return parts


def build_drafter(spec: str, ctx: DrafterContext, datastore: str | None = None) -> Drafter:
    """Instantiate the drafter a spec names. ``datastore``: a store directory that ``auto`` adds as a source."""
    from .fusion import FusedDrafter

    parts = parse_spec(spec)
    expanded: list[tuple[str, str | None]] = []
    for kind, arg in parts:
        if kind == "auto":
            for auto_kind, auto_arg in parse_spec(AUTO_SPEC):
                # a datastore joins through the sam source, which then matches both the context and the corpus
                expanded.append((auto_kind, datastore if auto_kind == "sam" and datastore else auto_arg))
        else:
            expanded.append((kind, arg))
    drafters = []
    for kind, arg in expanded:
        factory = FACTORIES.get(kind)
        if factory is None:
            raise ValueError(f"unknown drafter kind {kind!r} in {spec!r}; known: {', '.join(available_kinds())}")
        drafter = factory(arg, ctx)
        if arg and kind in ("sam",):
            drafter.name = f"{kind}:{arg.rstrip('/').split('/')[-1]}"
        drafters.append(drafter)
    return drafters[0] if len(drafters) == 1 else FusedDrafter(drafters)
