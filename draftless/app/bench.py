"""``draftless bench``: every method on the same prompts, interleaved, against plain ``model.generate``.

Methods: ``hf`` (plain greedy ``model.generate``), ``hf-pld`` (``model.generate(prompt_lookup_num_tokens=10)``), and
any drafter spec (``ngram``, ``sam+recycle``, ``auto`` ...), with ``@compiled`` appended (``auto@compiled``) to verify
on the compiled path as well (``accelerate(compile=True)``; its compiling falls in the cost curve and the warm-up).
For each prompt every method runs back to back, so slow drifts of the machine hit all methods alike; one warm-up
prompt runs first and is not counted.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..atomic import atomic_file
from ..hf.compat import model_path
from .prompts import BenchPrompt, compile_grammar_spec, encode_prompt, grammar_compiler_for

HF_METHODS = {"hf": {}, "hf-pld": {"prompt_lookup_num_tokens": 10}}
COMPILED_SUFFIX = "@compiled"  # a drafter method on the compiled verification path (fastpath/compiled.py)


@dataclass
class MethodTotals:
    wall_s: float = 0.0
    new_tokens: int = 0
    passes: int = 0
    identical: bool = True
    tree_nodes: int = 0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    prefill_ms: float = 0.0
    prompt_tokens: int = 0
    per_source: dict = field(default_factory=dict)


class _ForwardCounter:
    """Counts top-level forward calls of a model through a forward hook (no patching)."""

    def __init__(self, model):
        self.count = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1

    def close(self):
        self._handle.remove()


class _Method:
    def __init__(self, name: str, model, tokenizer, datastore: str | None, max_nodes: int,
                 draft_model: str | None = None):
        self.name = name
        self.model = model
        self.grammar_s = 0.0  # time the grammar processor took in this method's runs
        self.engine = None
        if name not in HF_METHODS:
            import draftless

            compiled = name.endswith(COMPILED_SUFFIX)
            spec = name[: -len(COMPILED_SUFFIX)] if compiled else name
            self.engine = draftless.accelerate(model, drafter=spec, tokenizer=tokenizer, datastore=datastore,
                                               draft_model=draft_model, max_nodes=max_nodes, compile=compiled)

    def run(self, ids: torch.Tensor, max_new_tokens: int, sampling: dict | None = None, grammar=None):
        """Returns (new token ids, seconds, target forward passes, stats or None). ``sampling``: ``temperature`` /
        ``top_k`` / ``top_p`` (None values left out) to sample, else greedy. ``grammar``: a
        ``draftless.grammar.Grammar`` the output must match (a fresh processor per run; its time is added to
        ``self.grammar_s``)."""
        decoding = sampling_options(sampling)
        processor = None
        if grammar is not None:
            from ..grammar import GrammarLogitsProcessor

            processor = GrammarLogitsProcessor(grammar)
            decoding["logits_processor"] = [processor]
        try:
            return self._run(ids, max_new_tokens, decoding)
        finally:
            if processor is not None:
                self.grammar_s += processor.busy_s

    def _run(self, ids: torch.Tensor, max_new_tokens: int, decoding: dict):
        if self.engine is not None:
            t0 = time.perf_counter()
            out = self.engine.generate(ids, max_new_tokens=max_new_tokens, **decoding)
            return out.new_tokens, time.perf_counter() - t0, out.stats.steps, out.stats
        counter = _ForwardCounter(self.model)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                seq = self.model.generate(ids, attention_mask=torch.ones_like(ids), **decoding,
                                          max_new_tokens=max_new_tokens, **HF_METHODS[self.name])
            elapsed = time.perf_counter() - t0
        finally:
            counter.close()
        return seq[0, ids.shape[1]:].tolist(), elapsed, counter.count, None


def sampling_options(sampling: dict | None) -> dict:
    """``generate`` keywords for a bench run: greedy, or sampling with the given settings (None values left out)."""
    if not sampling:
        return {"do_sample": False}
    return {"do_sample": True, **{k: v for k, v in sampling.items() if v is not None}}


def report_header(model, model_name: str, max_new_tokens: int, n_prompts: int, chat: bool,
                  sampling: dict | None) -> dict:
    """The fields every bench report opens with (schema in ARCHITECTURE.md)."""
    return {
        "model": model_name or model_path(model),
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "max_new_tokens": max_new_tokens,
        "n_prompts": n_prompts,
        "chat": chat,
        "torch_threads": torch.get_num_threads(),
        "sampling": sampling_options(sampling) if sampling else None,
    }


def run_bench(model, tokenizer, prompts: list[BenchPrompt], methods: list[str], max_new_tokens: int = 128,
              chat: bool = False, datastore: str | None = None, max_nodes: int = 32, model_name: str = "",
              draft_model: str | None = None,
              progress: bool = True, sampling: dict | None = None) -> dict:
    """Run ``methods`` over ``prompts`` and return the report dict (schema in ARCHITECTURE.md). ``sampling``:
    ``{"temperature", "top_k", "top_p"}`` to sample in every method (outputs then differ: ``identical_to_hf`` is
    None), else greedy."""
    if "hf" not in methods:
        methods = ["hf"] + list(methods)
    runners = [_Method(m, model, tokenizer, datastore, max_nodes, draft_model) for m in methods]
    encoded = [encode_prompt(tokenizer, p.text, chat) for p in prompts]
    grammars = [None] * len(prompts)
    if any(p.grammar_spec for p in prompts):
        compiler = grammar_compiler_for(model, tokenizer)
        compiled: dict[str, object] = {}
        for i, p in enumerate(prompts):
            if p.grammar_spec:
                key = json.dumps(p.grammar_spec, sort_keys=True)
                if key not in compiled:
                    compiled[key] = compile_grammar_spec(compiler, p.grammar_spec)
                grammars[i] = compiled[key]
    device = next(model.parameters()).device
    encoded = [e.to(device) for e in encoded]

    for r in runners:  # warm-up: kernels, cost curve, numba compilation
        r.run(encoded[0], min(16, max_new_tokens), grammar=grammars[0])
        r.grammar_s = 0.0
        if r.engine is not None and hasattr(r.engine.drafter, "grammar_s"):
            r.engine.drafter.grammar_s = 0.0

    totals = {m: MethodTotals() for m in methods}
    per_cat: dict[str, dict[str, MethodTotals]] = {}
    bar = tqdm(total=len(prompts) * len(runners), desc="bench", unit="run", disable=not progress)
    for prompt, ids, grammar in zip(prompts, encoded, grammars):
        reference = None
        for r in runners:
            tokens, seconds, passes, stats = r.run(ids, max_new_tokens, sampling, grammar)
            if r.name == "hf":
                reference = tokens
            for bucket in (totals[r.name], per_cat.setdefault(prompt.category, {}).setdefault(r.name, MethodTotals())):
                bucket.wall_s += seconds
                bucket.new_tokens += len(tokens)
                bucket.passes += passes
                bucket.identical &= sampling is not None or tokens == reference
                if stats is not None:
                    bucket.tree_nodes += stats.tree_nodes
                    bucket.draft_ms += stats.draft_ms
                    bucket.verify_ms += stats.verify_ms
                    bucket.prefill_ms += stats.prefill_ms
                    bucket.prompt_tokens += stats.prompt_tokens
                    for src, s in stats.per_source.items():
                        acc = bucket.per_source.setdefault(src, [0, 0])
                        acc[0] += s.accepted
                        acc[1] += s.proposed
            bar.update(1)
    bar.close()

    def rate(t: MethodTotals) -> float:
        return t.new_tokens / t.wall_s if t.wall_s else 0.0

    def mean_acc(t: MethodTotals) -> float:
        return t.new_tokens / t.passes if t.passes else 0.0

    report = {**report_header(model, model_name, max_new_tokens, len(prompts), chat, sampling), "methods": {}}
    hf_rate = rate(totals["hf"])
    for r in runners:
        t = totals[r.name]
        entry = {
            "tokens_per_s": round(rate(t), 3),
            "wall_s": round(t.wall_s, 3),
            "new_tokens": t.new_tokens,
            "mean_accepted": round(mean_acc(t), 4),
            "speedup_vs_hf": round(rate(t) / hf_rate, 4) if hf_rate else 0.0,
            "identical_to_hf": None if sampling else bool(t.identical),
            "per_category": {},
        }
        for cat, methods_totals in per_cat.items():
            c = methods_totals[r.name]
            hf_c = rate(methods_totals["hf"])
            entry["per_category"][cat] = {
                "tokens_per_s": round(rate(c), 3),
                "speedup_vs_hf": round(rate(c) / hf_c, 4) if hf_c else 0.0,
                "mean_accepted": round(mean_acc(c), 4),
                "identical_to_hf": None if sampling else bool(c.identical),
            }
            if r.engine is not None and c.passes:
                entry["per_category"][cat]["mean_tree_size"] = round(c.tree_nodes / c.passes, 3)
        if any(grammars) and t.passes:
            # the grammar's share of a step: the processor's masks, and the guard's matcher walks in drafting
            guard_s = getattr(r.engine.drafter, "grammar_s", 0.0) if r.engine is not None else 0.0
            entry["grammar_ms_per_step"] = round((r.grammar_s + guard_s) * 1000 / t.passes, 4)
            entry["grammar_share_of_step"] = round((r.grammar_s + guard_s) / t.wall_s, 4) if t.wall_s else 0.0
        if r.engine is not None:
            entry["mean_tree_size"] = round(t.tree_nodes / t.passes, 3) if t.passes else 0.0
            entry["draft_ms_per_step"] = round(t.draft_ms / t.passes, 4) if t.passes else 0.0
            entry["verify_ms_per_step"] = round(t.verify_ms / t.passes, 3) if t.passes else 0.0
            entry["step_ms"] = round(t.wall_s * 1000 / t.passes, 3) if t.passes else 0.0
            entry["prefill_s"] = round(t.prefill_ms / 1000, 3)  # of wall_s: the prompts' prefills
            entry["prompt_tokens"] = t.prompt_tokens
            entry["per_source"] = {s: {"accepted": a, "proposed": p, "acceptance": round(a / p, 4) if p else 0.0}
                                   for s, (a, p) in t.per_source.items()}
            if r.engine.adaptive:
                entry["cost_curve_rel"] = {str(k): v for k, v in r.engine.cost_curve.relative().items()}
                # what the passes of this run really cost, relative to t(1) (engine/observed_costs.py)
                entry["running_cost_curve_rel"] = {str(k): v for k, v in
                                                   r.engine.running_cost_curve.relative().items()}
                report.setdefault("cost_curve_ms", dict(zip(map(str, r.engine.cost_curve.sizes),
                                                            [round(x, 3) for x in r.engine.cost_curve.ms])))
                # every path's measured t(n), interleaved in one measurement (the engine's own curve)
                curve = r.engine.cost_curve
                entry["cost_curve_by_path_ms"] = {p: dict(zip(map(str, curve.sizes), [round(x, 3) for x in v]))
                                                  for p, v in curve.by_path.items()}
            reports = drafter_reports(r.engine.drafter)
            if reports:
                entry["drafter_reports"] = reports
                window = sum(x.get("window_nodes_verified", 0) for x in reports.values())
                if window and t.passes and r.engine.adaptive:
                    # what the pinned window added to a mean pass: t(tree) - t(tree without the window)
                    curve, size, per_pass = r.engine.cost_curve, t.tree_nodes / t.passes, window / t.passes
                    extra = float(curve.cost(size)) - float(curve.cost(max(1.0, size - per_pass)))
                    entry["window_nodes_per_pass"] = round(per_pass, 3)
                    entry["window_cost_per_pass_rel"] = round(extra / float(curve.cost(1)), 4)
        report["methods"][r.name] = entry
    return report


def drafter_reports(drafter) -> dict:
    """``{source name: counters}`` of every source of ``drafter`` (a fusion's too) that keeps a ``report()``
    (lookahead: pool hit rate, window nodes verified and accepted). Counters include the warm-up run."""
    sources = getattr(drafter, "drafters", None) or [drafter]
    return {d.name: d.report() for d in sources if callable(getattr(d, "report", None))}


def markdown_table(report: dict) -> str:
    """One row per method: overall figures, then speedup vs hf per category."""
    methods = report["methods"]
    cats = sorted({c for m in methods.values() for c in m["per_category"]})
    head = ["method", "tok/s", "speedup", "mean acc.", "identical"] + cats
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in methods.items():
        row = [f"`{name}`", f"{m['tokens_per_s']:.1f}", f"{m['speedup_vs_hf']:.2f}x", f"{m['mean_accepted']:.2f}",
               "n/a (sampled)" if m["identical_to_hf"] is None else "yes" if m["identical_to_hf"] else "**no**"]
        row += [f"{m['per_category'][c]['speedup_vs_hf']:.2f}x" for c in cats]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_speedups(report: dict, path: str | Path) -> None:
    """Grouped bars: speedup over ``hf`` per category, one bar per method."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need matplotlib: pip install 'draftless[plots]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in report["methods"] if m != "hf"]
    cats = sorted({c for m in report["methods"].values() for c in m["per_category"]}) + ["overall"]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(8, len(cats) * 0.9), 4.5))
    x = np.arange(len(cats))
    for i, name in enumerate(methods):
        m = report["methods"][name]
        vals = [m["per_category"].get(c, {}).get("speedup_vs_hf", 0.0) for c in cats[:-1]] + [m["speedup_vs_hf"]]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, cats, rotation=30, ha="right")
    ax.set_ylabel("speedup vs model.generate")
    ax.set_title(f"{report['model']} ({report['device']}, {report['dtype']}, {report['max_new_tokens']} new tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, json_path: str | Path, markdown_path: str | Path | None = None,
                 plot_path: str | Path | None = None) -> None:
    with atomic_file(json_path) as fh:
        fh.write(json.dumps(report, indent=2))
    if markdown_path:
        with atomic_file(markdown_path) as fh:
            fh.write(markdown_table(report))
    if plot_path:
        plot_speedups(report, plot_path)
