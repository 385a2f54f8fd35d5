"""``draftless.custom_generate``: the one argument that turns a user's own ``model.generate`` call into draftless.

    out = model.generate(**inputs, max_new_tokens=128, custom_generate=draftless.custom_generate, drafter="auto")

transformers (>= 4.56) accepts a callable as ``custom_generate``: ``model.generate`` resolves the generation
config, builds the logits processors and stopping criteria, prepares the model kwargs, then calls
``custom_generate(model, input_ids, logits_processor=..., stopping_criteria=..., generation_config=...,
**model_kwargs)`` in place of its own decoding loop, plus those of the callable's own parameters that the call
named (a parameter ``_sample`` does not have: here ``drafter``, ``drafter_options``, ``draftless_streamer``).

What transformers does not forward to the callable (5.24):

- ``streamer=``: it puts the prompt into it itself and then keeps it (the callable never sees it, so it would get
  no tokens and no ``end()``). Pass the streamer as ``draftless_streamer=`` instead: draftless puts the prompt,
  each step's tokens and ``end()``, as ``model.generate(streamer=...)`` does.
- ``tokenizer=``: ``stop_strings`` then fail inside ``model.generate`` before the callable runs. Pass
  ``stopping_criteria=StoppingCriteriaList([StopStringCriteria(tokenizer, stop_strings)])`` instead (or use
  ``draftless.accelerate(model).generate(..., stop_strings=..., tokenizer=...)``).
- ``synced_gpus``: multi-GPU synchronisation does not apply.
"""
from __future__ import annotations

from collections import OrderedDict

from .hf.generation import plan_from_prepared


class CustomGenerate:
    """The ``custom_generate`` callable, and the engines it keeps between calls.

    One ``SpeculativeGenerator`` per (model, drafter, options) persists across calls, so the cost curve, the
    calibration and the draft-time estimate an engine learned on earlier calls serve the later ones. The user's
    model object is never touched (nothing is stored on it).

    Why a bounded map rather than a weak-keyed one: an engine holds its model (and drafters such as ``self``
    hold it too), so in a ``WeakKeyDictionary`` the value would keep its own key alive and no entry would ever
    be dropped. Weakening the engine's hold on its model would make every engine fragile instead. So the engines
    live in this object's ``engines`` map, least recently used first, at most ``capacity`` of them; ``release``
    drops the engines of one model (the model is then freed once the user drops it) and ``clear`` drops all.
    ``draftless.custom_generate`` is the one instance the package makes.
    """

    def __init__(self, capacity: int = 4):
        self.capacity = int(capacity)
        self.engines: OrderedDict[tuple, object] = OrderedDict()

    def engine_for(self, model, drafter="auto", drafter_options: dict | None = None):
        """The persistent engine for ``model`` with ``drafter`` (a spec string or a ``Drafter`` object) and
        ``drafter_options`` (``draftless.accelerate``'s keywords: ``tokenizer``, ``datastore``, ``max_nodes``,
        ...), built on first use."""
        from . import accelerate

        options = dict(drafter_options or {})
        key = (id(model), drafter if isinstance(drafter, str) else id(drafter),
               tuple(sorted((k, id(v) if not isinstance(v, (str, int, float, bool, type(None))) else v)
                            for k, v in options.items())))
        engine = self.engines.get(key)
        if engine is None or engine.model is not model:  # a recycled id() of a freed model: rebuild
            engine = accelerate(model, drafter=drafter, **options)
            self.engines[key] = engine
        self.engines.move_to_end(key)
        while len(self.engines) > self.capacity:
            self.engines.popitem(last=False)
        return engine

    def release(self, model) -> None:
        """Forget every engine built for ``model``."""
        for key in [k for k, e in self.engines.items() if e.model is model]:
            del self.engines[key]

    def clear(self) -> None:
        self.engines.clear()

    def __call__(self, model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                 drafter="auto", drafter_options: dict | None = None, draftless_streamer=None,
                 namespace: str | None = None, **model_kwargs):
        """Called by ``model.generate``: ``input_ids`` int64 [B, P] (left padding for B > 1), the processors,
        criteria and resolved ``generation_config`` it built; ``model_kwargs`` holds ``attention_mask`` (None when
        it was all ones) and the cache and flags the engine does not use. Returns what ``model.generate`` returns:
        the ``sequences`` tensor, or ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate=True``."""
        engine = self.engine_for(model, drafter, drafter_options)
        plan = plan_from_prepared(generation_config, logits_processor, stopping_criteria)
        return engine.generate_from_plan(input_ids, model_kwargs.get("attention_mask"), plan,
                                         streamer=draftless_streamer, namespace=namespace)


custom_generate = CustomGenerate()
