"""``accelerate`` and ``generate``: a model paired with a drafter, the engine behind every public entry point
(``draftless.accelerate``, ``draftless.generate``, and ``custom_generate``'s engine pools in ``dropin.py``).

Spec strings become drafters here (``drafters/spec.py``), with the history a spec string gets by default
(``drafters/history.py``); the engine is ``engine/generator.py``'s ``SpeculativeGenerator``.
"""
from __future__ import annotations

from .drafters.history import AUTO_HISTORY, history_store_for
from .drafters.spec import DrafterContext, build_drafter, parse_spec, with_history
from .engine.generator import GenerationResult, SpeculativeGenerator
from .engine.protocol import Drafter


def accelerate(model, drafter="auto", tokenizer=None, datastore: str | None = None, draft_model: str | None = None,
               history="auto", **config) -> SpeculativeGenerator:
    """Pair ``model`` with a drafter; returns an engine whose ``.generate`` takes ``model.generate``'s arguments
    and returns its result, losslessly: greedy output equals ``model.generate``'s, sampled output has its
    distribution (see ``SpeculativeGenerator.generate`` for what is supported and what is refused).

    ``drafter``: a ``Drafter`` object or a spec string (``"ngram"``, ``"sam"``, ``"sam+recycle"``,
    ``"sam:datastores/NAME"``, ``"auto"``). ``tokenizer`` lets datastore-backed drafters check that a store was
    built with the same tokenizer. ``datastore``: a store ``auto`` adds as a source (a sam store through its sam source;
    a rest or dense store, sharded or not, as a source of its own); ``draft_model``: a model
    drafter (``"self"``, an HF folder, a shipped name) that ``auto`` combines with retrieval. ``history``: memory
    across this engine's requests, per ``generate(namespace=...)`` (docs/history.md): ``True`` (in memory), a
    directory (kept there, reloaded at start; needs ``tokenizer``), a ``HistoryStore``, or None (off); it adds a
    ``history`` source to a spec string (``auto`` included). The default, ``"auto"``, is an in-memory history that
    only ``auto`` uses and only for requests that pass a namespace (a request without one drafts as with None;
    every namespace stays silent until it holds a few requests). ``config``: ``max_nodes``, ``adaptive``,
    ``cost_curve``, ``learn_costs``, ``calibrate``, ``min_gain``, ``verbose``, ``compile``, ``drafter_factory`` (see
    ``SpeculativeGenerator``; a spec string gets a factory of its own, so the rows of a batch are verified together,
    each with its own drafter).
    """
    default = isinstance(history, str) and history == AUTO_HISTORY
    if isinstance(drafter, str):
        kinds = {kind for kind, _ in parse_spec(drafter)}
        if default and ("auto" not in kinds or "history" in kinds):
            # the default history is auto's; an explicit spec drafts exactly what it names (its own history too)
            history, default = None, False
        store = history_store_for(True if default else history, tokenizer)
        spec = with_history(drafter) if store is not None and not default else drafter
        context = DrafterContext(model=model, tokenizer=tokenizer, history=store, history_namespaced_only=default)
        drafter = build_drafter(spec, context, datastore=datastore, draft_model=draft_model)
        # more rows of a batch get drafters of their own, built from the same spec
        config.setdefault("drafter_factory",
                          lambda: build_drafter(spec, context, datastore=datastore, draft_model=draft_model))
    elif history is not None and not default:
        raise ValueError("history= needs a spec string drafter; to a Drafter object add a HistoryDrafter yourself")
    elif not isinstance(drafter, Drafter):
        raise TypeError("drafter must be a spec string or implement the Drafter protocol, "
                        f"got {type(drafter).__name__}")
    return SpeculativeGenerator(model, drafter, **config)


def generate(model, input_ids, drafter="auto", tokenizer=None, **kwargs) -> GenerationResult:
    """One-shot form of ``accelerate(model, drafter).generate(input_ids, **kwargs)`` (a fresh engine each call: to
    keep what an engine learns across calls, hold the engine, or use ``custom_generate``).

    Engine options (``max_nodes``, ``adaptive``, ...) may be mixed into ``kwargs``.
    """
    engine_keys = {"max_nodes", "adaptive", "cost_curve", "calibrate", "min_gain", "verbose", "datastore",
                   "draft_model", "drafter_factory", "compile"}
    config = {k: kwargs.pop(k) for k in list(kwargs) if k in engine_keys}
    return accelerate(model, drafter=drafter, tokenizer=tokenizer, **config).generate(input_ids, tokenizer=tokenizer,
                                                                                  **kwargs)
