"""``self``: the target drafts for itself with some decoder layers skipped (Draft & Verify, SWIFT), no training.

The draft model is a ``hf.layer_view.LayerSubsetModel``: the target's own embedding, a subset of its layers, its final
norm and head, run with the drafter's own KV cache; the target is not modified. Drafting is ``ModelDrafter``'s
dynamic tree.

Which layers to skip is chosen by measurement, once per model, and cached as json under ``state_dir()/self_spec/``
(see ``draftless.paths``). A calibration sequence (a short text plus the target's own greedy continuation of it) is
run teacher-forced through candidate subsets; a subset's *agreement* ``a`` is how often its argmax equals the full
model's, and its relative cost ``r`` is the parameters a decode step touches (kept layers + head) over the full
model's. Treating acceptances as independent with probability ``a``, a chain of ``g`` drafts commits on average
``(1 - a^(g+1)) / (1 - a)`` tokens for a cost of ``1 + g*r`` target steps, so each candidate is scored by

    speedup(a, r) = max over g in 1..8 of  (1 - a^(g+1)) / ((1 - a) * (1 + g*r))

Candidates: the first N layers; contiguous blocks of middle layers; every other layer of a middle range; and a
greedy order (layers ranked by how little skipping each alone costs in agreement, then removed in that order).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_file
from ..hf.attention import inspect_model, tree_attention_mask
from ..hf.compat import model_path
from ..hf.layer_view import LayerSubsetModel, num_layers
from ..paths import safe_filename, state_dir
from .model_drafter import ModelDrafter

CALIBRATION_TEXT = (
    "The following is a short conversation between a user and a helpful assistant.\n"
    "User: Can you explain what a hash table is and write a small example in Python?\n"
    "Assistant: A hash table stores key-value pairs and finds a value from its key in constant time on average. "
    "It computes a hash of the key to pick a bucket.\n\n```python\ndef count_words(text):\n    counts = {}\n"
    "    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts\n```\n"
)
FORMAT_VERSION = 1


def parse_layers(text: str, n_layers: int | None = None) -> list[int]:
    """``"3,5,8-11"`` -> ``[3, 5, 8, 9, 10, 11]``; with ``n_layers``, ``"20-"`` runs to the last layer (so
    ``self:20-`` drafts with the first 20 layers)."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if dash and not hi:
            if n_layers is None:
                raise ValueError(f"open range {part!r} needs the number of layers")
            hi = str(n_layers - 1)
        out.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(out))


def chain_speedup(agreement: float, relative_cost: float, max_chain: int = 8) -> float:
    """Expected tokens per unit of target-step time with the best chain length (see module docstring); below 1
    drafting does not pay (plain decoding scores 1)."""
    a = min(max(agreement, 0.0), 0.999)
    best = 0.0
    for g in range(1, max_chain + 1):
        best = max(best, (1 - a ** (g + 1)) / ((1 - a) * (1 + g * relative_cost)))
    return best


def model_fingerprint(model) -> str:
    """Name, shape and a hash of a few weights: tells apart models that share a name (or have none)."""
    name = os.path.basename(os.path.normpath(model_path(model))) or model.config.model_type
    weight = model.get_input_embeddings().weight
    sample = weight.detach().flatten()[:4096].float().cpu().numpy().tobytes()
    digest = hashlib.sha1(sample).hexdigest()[:10]
    param = next(model.parameters())
    return f"{name}-{num_layers(model)}L-{model.num_parameters()}-{str(param.dtype).replace('torch.', '')}-{digest}"


def _cache_path(model) -> Path:
    return state_dir() / "self_spec" / f"{safe_filename(model_fingerprint(model))}.json"


class LayerChooser:
    """Scores layer subsets of ``model`` on a calibration sequence ``ids`` (int64[T])."""

    def __init__(self, model, ids: np.ndarray, skip_first: int = 4):
        self.model = model
        self.n = num_layers(model)
        self.layout = inspect_model(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        ids = np.asarray(ids, dtype=np.int64)
        T = len(ids)
        self.ids = torch.from_numpy(ids).to(self.device)[None]
        self.pos = torch.arange(T, device=self.device)[None]
        self.mask = tree_attention_mask(self.layout, np.tril(np.ones((T, T), dtype=bool)), np.arange(T), 0,
                                        self.dtype, self.device)
        self.skip_first = min(skip_first, T - 1)
        with torch.inference_mode():
            self.want = self._argmax(tuple(range(self.n)))
        self.results: dict[tuple[int, ...], dict] = {}

    def _argmax(self, keep: tuple[int, ...]) -> torch.Tensor:
        view = LayerSubsetModel(self.model, keep)
        logits = view(self.ids, self.pos, self.mask, use_cache=False).logits[0]
        return logits[self.skip_first:].argmax(-1)

    @torch.inference_mode()
    def score(self, keep: Sequence[int]) -> dict:
        keep = tuple(sorted(set(int(i) for i in keep)))
        if keep not in self.results:
            agreement = float((self._argmax(keep) == self.want).float().mean())
            cost = LayerSubsetModel(self.model, keep).relative_cost()
            self.results[keep] = {
                "skip": [i for i in range(self.n) if i not in keep],
                "agreement": agreement,
                "relative_cost": cost,
                "speedup": chain_speedup(agreement, cost),
            }
        return self.results[keep]

    def candidates(self) -> list[tuple[int, ...]]:
        n = self.n
        every = set(range(n))
        out: list[set] = []
        for frac in (0.25, 0.33, 0.5, 0.66):  # the first N layers
            out.append(set(range(max(1, round(n * frac)))))
        for frac in (0.25, 0.33, 0.5):  # contiguous middle blocks (first and last layers kept)
            b = max(1, round(n * frac))
            step = max(1, n // 8)
            for s in range(1, max(2, n - b), step):
                out.append(every - set(range(s, min(n - 1, s + b))))
        for lo, hi in ((1, n - 1), (n // 4, 3 * n // 4), (n // 8, 7 * n // 8)):  # every other middle layer
            out.append(every - set(range(lo + 1, hi, 2)))
        return [tuple(sorted(c)) for c in out if c and len(c) < n]

    def choose(self, greedy: bool = True) -> dict:
        """Evaluate the candidate families and return the best result (with ``evaluated`` candidates)."""
        for keep in self.candidates():
            self.score(keep)
        if greedy and self.n > 1:
            full = tuple(range(self.n))
            alone = {i: self.score(tuple(j for j in full if j != i))["agreement"] for i in range(self.n)}
            order = sorted(alone, key=lambda i: -alone[i])
            keep = list(full)
            best_seen = 0.0
            for i in order[:-1]:
                keep.remove(i)
                result = self.score(tuple(keep))
                best_seen = max(best_seen, result["speedup"])
                if result["agreement"] < 0.2 or result["speedup"] < 0.7 * best_seen:
                    break
        best = max(self.results.values(), key=lambda r: r["speedup"])
        return dict(best, evaluated=len(self.results))


def calibration_ids(model, tokenizer=None, prompt_ids=None, continuation: int = 48) -> np.ndarray:
    """A calibration sequence: the built-in text (or ``prompt_ids``) plus the target's greedy continuation."""
    if tokenizer is not None:
        ids = tokenizer(CALIBRATION_TEXT, return_tensors="pt").input_ids[0]
    elif prompt_ids is not None and len(prompt_ids) > 0:
        ids = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64))[-192:]
    else:
        raise ValueError("layer calibration needs a tokenizer, calibration ids or a prompt")
    device = next(model.parameters()).device
    x = ids[None].to(device)
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=continuation, do_sample=False,
                             pad_token_id=0)
    return out[0].cpu().numpy()


def cached_choice(model) -> dict | None:
    """The stored choice for ``model`` if one was measured before, else None (never measures)."""
    path = _cache_path(model)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("format") == FORMAT_VERSION else None


def worthwhile(model, min_speedup: float = 1.1) -> bool:
    """True when a stored measurement says self-speculation should pay on ``model`` (for ``auto``; never measures:
    a missing measurement counts as no)."""
    from ..hf.attention import UnsupportedModel

    try:
        choice = cached_choice(model)
    except UnsupportedModel:
        return False
    return choice is not None and choice.get("speedup", 0.0) >= min_speedup


def choose_skip_layers(model, tokenizer=None, prompt_ids=None, ids=None, refresh: bool = False,
                       verbose: bool = False) -> dict:
    """The cached (or freshly measured) choice for ``model``: ``{"skip": [...], "agreement", "relative_cost",
    "speedup", "evaluated", "seconds"}``."""
    path = _cache_path(model)
    if not refresh:
        data = cached_choice(model)
        if data is not None:
            return data
    if verbose:
        print("[draftless] choosing layers to skip for self-speculation (once per model)...", flush=True)
    t0 = time.perf_counter()
    if ids is None:
        ids = calibration_ids(model, tokenizer, prompt_ids)
    result = LayerChooser(model, ids).choose()
    result.update(format=FORMAT_VERSION, key=model_fingerprint(model), seconds=round(time.perf_counter() - t0, 2),
                  calibration_tokens=int(len(ids)))
    with atomic_file(path) as fh:
        json.dump(result, fh, indent=1)
    return result


class SelfSpecDrafter(ModelDrafter):
    """The target with ``skip_layers`` skipped drafts a tree for the target.

    ``skip_layers``: layer indices (or ``"3,5-9"``); ``None`` picks them by measurement (cached per model), using
    ``tokenizer``'s encoding of a built-in text when given, else the first request's prompt. Other keyword
    arguments go to ``ModelDrafter`` (``topk``, ``max_depth``, ``max_nodes``, ``min_score``, ``pass_cost``);
    ``pass_cost`` defaults to the kept layers' share of the target's compute (``LayerSubsetModel.relative_cost``).
    """

    name = "self"

    def __init__(self, model, skip_layers: Sequence[int] | str | None = None, tokenizer=None, verbose: bool = False,
                 **drafter_kw):
        self.target = model
        self.n_layers = num_layers(model)
        self.tokenizer = tokenizer
        self.verbose = verbose
        self._drafter_kw = drafter_kw
        self.choice: dict | None = None
        if isinstance(skip_layers, str):
            skip_layers = parse_layers(skip_layers, self.n_layers)
        if skip_layers is None and tokenizer is not None:
            self.choice = choose_skip_layers(model, tokenizer=tokenizer, verbose=verbose)
            skip_layers = self.choice["skip"]
        self._ready = False
        if skip_layers is not None:
            self._build(skip_layers)

    def _build(self, skip_layers: Sequence[int]) -> None:
        skip = {int(i) for i in skip_layers}
        bad = [i for i in skip if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"skip_layers {bad} out of range for a {self.n_layers}-layer model")
        keep = [i for i in range(self.n_layers) if i not in skip]
        if not keep:
            raise ValueError("cannot skip every layer")
        self.skip_layers = sorted(skip)
        self._ready = True
        view = LayerSubsetModel(self.target, keep)
        kw = dict(self._drafter_kw)
        kw.setdefault("pass_cost", view.relative_cost())
        ModelDrafter.__init__(self, view, **kw)

    def begin(self, prompt_ids: np.ndarray) -> None:
        if not self._ready:
            if len(prompt_ids) == 0:
                return
            self.choice = choose_skip_layers(self.target, prompt_ids=prompt_ids, verbose=self.verbose)
            self._build(self.choice["skip"])
        ModelDrafter.begin(self, prompt_ids)
