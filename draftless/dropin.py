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

import threading
from collections import OrderedDict
from contextlib import contextmanager

from .api import accelerate
from .hf.generation import plan_from_prepared, refuse_inputs_embeds


class EnginePool:
    """The engines of one (model, drafter, options) key: the first built by ``accelerate``, the others its
    ``sibling()``s, so they share the cost curve, the packed weights and what requests teach them. A call takes
    an idle engine, or builds one while fewer than ``bound`` exist, or waits for one to come back; each engine
    serves one request at a time. A drafter object passed without a factory cannot be cloned: its pool holds one
    engine and concurrent calls take turns."""

    def __init__(self, build, bound: int):
        self._build = build  # () -> SpeculativeGenerator, the pool's first engine
        self.bound = max(1, int(bound))
        self.engines: list = []  # every engine built, first one first
        self._idle: list = []
        self._building = 0  # engines being built outside the lock (they count against the bound)
        self._changed = threading.Condition()

    @property
    def model(self):
        return self.engines[0].model if self.engines else None

    def _can_grow(self) -> bool:
        first = self.engines[0] if self.engines else None
        return first is None or first.drafter_factory is not None

    @contextmanager
    def engine(self):
        """An engine for one request, returned to the pool afterwards."""
        with self._changed:
            while not self._idle and (len(self.engines) + self._building >= self.bound or not self._can_grow()
                                      or (self._building and not self.engines)):
                self._changed.wait()
            engine = self._idle.pop() if self._idle else None
            if engine is None:
                self._building += 1
                first = self.engines[0] if self.engines else None
        if engine is None:
            try:  # built outside the lock: a first engine may measure its cost curve (seconds)
                engine = self._build() if first is None else first.sibling()
            finally:
                with self._changed:
                    self._building -= 1
                    self._changed.notify_all()
            with self._changed:
                self.engines.append(engine)
        try:
            yield engine
        finally:
            with self._changed:
                self._idle.append(engine)
                self._changed.notify_all()


class CustomGenerate:
    """The ``custom_generate`` callable, and the engines it keeps between calls.

    One ``EnginePool`` per (model, drafter, options) persists across calls, so the cost curve, the calibration
    and the draft-time estimate its engines learned on earlier calls serve the later ones. Concurrent calls (a web
    server's thread pool, a Gradio queue) each get an engine of their own from the pool, up to ``max_concurrent``
    per key (more wait their turn), and return exactly what ``model.generate`` returns. The user's model object is
    never touched (nothing is stored on it, its config is never switched).

    Why a bounded map rather than a weak-keyed one: an engine holds its model (and drafters such as ``self``
    hold it too), so in a ``WeakKeyDictionary`` the value would keep its own key alive and no entry would ever
    be dropped. Weakening the engine's hold on its model would make every engine fragile instead. So the pools
    live in this object's ``engines`` map, least recently used first, at most ``capacity`` of them; ``release``
    drops the pools of one model (the model is then freed once the user drops it) and ``clear`` drops all.
    ``draftless.custom_generate`` is the one instance the package makes.
    """

    def __init__(self, capacity: int = 4, max_concurrent: int = 8):
        self.capacity = int(capacity)
        self.max_concurrent = int(max_concurrent)
        self.engines: OrderedDict[tuple, EnginePool] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(model, drafter, options: dict) -> tuple:
        return (id(model), drafter if isinstance(drafter, str) else id(drafter),
                tuple(sorted((k, id(v) if not isinstance(v, (str, int, float, bool, type(None))) else v)
                             for k, v in options.items())))

    def pool_for(self, model, drafter="auto", drafter_options: dict | None = None) -> EnginePool:
        """The persistent ``EnginePool`` for ``model`` with ``drafter`` (a spec string or a ``Drafter`` object) and
        ``drafter_options`` (``draftless.accelerate``'s keywords: ``tokenizer``, ``datastore``, ``max_nodes``,
        ...); its first engine is built on first use."""
        options = dict(drafter_options or {})
        key = self._key(model, drafter, options)
        with self._lock:
            pool = self.engines.get(key)
            if pool is None or (pool.model is not None and pool.model is not model):  # a recycled id(): rebuild
                pool = EnginePool(lambda: accelerate(model, drafter=drafter, **options), self.max_concurrent)
                self.engines[key] = pool
            self.engines.move_to_end(key)
            while len(self.engines) > self.capacity:
                self.engines.popitem(last=False)
        return pool

    def engine_for(self, model, drafter="auto", drafter_options: dict | None = None):
        """The first engine of ``pool_for(model, drafter, drafter_options)`` (built now if needed): for reading
        what the pool learned (its stats, its cost curve). Requests go through the pool."""
        pool = self.pool_for(model, drafter, drafter_options)
        if not pool.engines:
            with pool.engine():
                pass
        return pool.engines[0]

    def release(self, model) -> None:
        """Forget every engine built for ``model``."""
        with self._lock:
            for key in [k for k, p in self.engines.items() if p.model is model or k[0] == id(model)]:
                del self.engines[key]

    def clear(self) -> None:
        with self._lock:
            self.engines.clear()

    def __call__(self, model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                 drafter="auto", drafter_options: dict | None = None, draftless_streamer=None,
                 namespace: str | None = None, **model_kwargs):
        """Called by ``model.generate``: ``input_ids`` int64 [B, P] (left padding for B > 1), the processors,
        criteria and resolved ``generation_config`` it built; ``model_kwargs`` holds ``attention_mask`` (None when
        it was all ones) and the cache and flags the engine does not use. Returns what ``model.generate`` returns:
        the ``sequences`` tensor, or ``GenerateDecoderOnlyOutput`` with ``return_dict_in_generate=True``."""
        refuse_inputs_embeds(model_kwargs)
        plan = plan_from_prepared(generation_config, logits_processor, stopping_criteria)
        with self.pool_for(model, drafter, drafter_options).engine() as engine:
            return engine.generate_from_plan(input_ids, model_kwargs.get("attention_mask"), plan,
                                             streamer=draftless_streamer, namespace=namespace)


custom_generate = CustomGenerate()
