"""``draftless bench --batch-size 1,4,8``: left-padded batches of prompts, draftless against ``model.generate`` at
the same batch size.

The prompts are grouped into consecutive batches of B (a last, smaller group is dropped, so every batch size sees
full batches), left-padded with the tokenizer's pad id. For each batch every method runs back to back (``hf``
first, as the reference), so slow drifts of the machine hit all methods alike; one warm-up batch per size runs
first and is not counted. Greedy runs check that every row equals ``model.generate``'s; sampling runs
(``sampling``: ``temperature`` / ``top_k`` / ``top_p``, passed to both) differ by design and report speed and tokens
per pass only.

Report: ``{"model", "device", "dtype", "max_new_tokens", "n_prompts", "chat", "torch_threads", "sampling",
"batches": {B: {"n_batches", "methods": {NAME: {"tokens_per_s", "wall_s", "new_tokens", "forward_passes",
"tokens_per_row_pass", "speedup_vs_hf", "identical_to_hf"}}}}}``. ``new_tokens`` counts each row's generated
tokens up to its first EOS (included), the same way for every method; ``forward_passes`` counts top-level model
calls (prefill included); ``tokens_per_row_pass`` is new tokens over passes times rows still decoding in them
(draftless: its per-row steps; ``hf``: one token per row per pass, so 1.0 by definition).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..atomic import atomic_file
from .bench import _ForwardCounter, report_header, sampling_options
from .prompts import BenchPrompt, encode_prompt


@dataclass
class _Totals:
    wall_s: float = 0.0
    new_tokens: int = 0
    forward_passes: int = 0
    row_passes: int = 0
    identical: bool = True


def left_padded(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 [B, P] from B prompts (int64 [1, P_i] each), padded on the left."""
    width = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:] = r[0]
        mask[i, width - r.shape[1]:] = 1
    return ids, mask


def generated_counts(sequences: torch.Tensor, prompt_width: int, eos: set[int]) -> list[int]:
    """Per row, the generated tokens up to and including the first EOS (all of them without one)."""
    counts = []
    for row in sequences[:, prompt_width:].tolist():
        hit = next((i for i, t in enumerate(row) if t in eos), None)
        counts.append(len(row) if hit is None else hit + 1)
    return counts


def eos_ids(model, tokenizer) -> set[int]:
    """The EOS ids ``model.generate`` stops on for this model (its generation config, else the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = getattr(tokenizer, "eos_token_id", None)
    return set() if eos is None else ({int(eos)} if isinstance(eos, int) else {int(e) for e in eos})


def run_batch_bench(model, tokenizer, prompts: list[BenchPrompt], methods: list[str], batch_sizes: list[int],
                    max_new_tokens: int = 128, chat: bool = False, sampling: dict | None = None,
                    datastore: str | None = None, max_nodes: int = 32, draft_model: str | None = None,
                    model_name: str = "", seed: int = 0, progress: bool = True) -> dict:
    """Run ``hf`` and each drafter spec in ``methods`` over ``prompts`` batched by each of ``batch_sizes``; returns
    the report dict (module docstring). ``sampling``: ``{"temperature": T, "top_k": K, "top_p": P}`` (None values
    left out) to sample, else greedy."""
    import draftless

    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {batch_sizes}")
    if max(batch_sizes) > len(prompts):
        raise ValueError(f"batch size {max(batch_sizes)} needs at least that many prompts, got {len(prompts)}")
    methods = [m for m in methods if m not in ("hf", "hf-pld")]
    if not methods:
        raise ValueError("the batch bench needs at least one drafter spec in --methods (hf always runs)")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = eos_ids(model, tokenizer)
    options = {**sampling_options(sampling), "pad_token_id": pad_id}
    engines = {m: draftless.accelerate(model, drafter=m, tokenizer=tokenizer, datastore=datastore,
                                       draft_model=draft_model, max_nodes=max_nodes) for m in methods}
    encoded = [encode_prompt(tokenizer, p.text, chat) for p in prompts]
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)

    def run(name: str, ids: torch.Tensor, mask: torch.Tensor, new: int) -> tuple[torch.Tensor, float, int, int]:
        """(sequences, seconds, forward passes, row passes) of one method on one batch."""
        counter = _ForwardCounter(model)
        try:
            t0 = time.perf_counter()
            with torch.inference_mode():
                if name == "hf":
                    seq = model.generate(ids, attention_mask=mask, max_new_tokens=new, **options)
                else:
                    seq = engines[name].generate(ids, attention_mask=mask, max_new_tokens=new, generator=generator,
                                                 **options).sequences
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
        finally:
            counter.close()
        passes = counter.count
        row_passes = sum(s.steps for s in engines[name].last_row_stats) if name != "hf" else 0
        return seq, seconds, passes, row_passes

    report = {**report_header(model, model_name, max_new_tokens, len(prompts), chat, sampling), "batches": {}}
    names = ["hf"] + methods
    bar = tqdm(total=sum(len(prompts) // b for b in batch_sizes) * len(names), desc="batch bench", unit="run",
               disable=not progress)
    for size in batch_sizes:
        groups = [encoded[i: i + size] for i in range(0, len(encoded) - size + 1, size)]
        batches = [tuple(t.to(device) for t in left_padded(g, pad_id)) for g in groups]
        for name in names:  # warm-up: kernels, cost curve, the row drafters of this size
            run(name, *batches[0], min(16, max_new_tokens))
        totals = {name: _Totals() for name in names}
        for ids, mask in batches:
            reference = None
            for name in names:
                seq, seconds, passes, row_passes = run(name, ids, mask, max_new_tokens)
                counts = generated_counts(seq, ids.shape[1], eos)
                t = totals[name]
                t.wall_s += seconds
                t.new_tokens += sum(counts)
                t.forward_passes += passes
                t.row_passes += row_passes if name != "hf" else sum(counts)
                if name == "hf":
                    reference = seq
                elif not sampling:
                    t.identical &= seq.shape == reference.shape and bool(torch.equal(seq, reference))
                bar.update(1)
        hf_rate = totals["hf"].new_tokens / totals["hf"].wall_s
        entry = {"n_batches": len(batches), "methods": {}}
        for name, t in totals.items():
            rate = t.new_tokens / t.wall_s if t.wall_s else 0.0
            entry["methods"][name] = {
                "tokens_per_s": round(rate, 3),
                "wall_s": round(t.wall_s, 3),
                "new_tokens": t.new_tokens,
                "forward_passes": t.forward_passes,
                "tokens_per_row_pass": round(t.new_tokens / t.row_passes, 4) if t.row_passes else 0.0,
                "speedup_vs_hf": round(rate / hf_rate, 4) if hf_rate else 0.0,
                "identical_to_hf": None if sampling else bool(t.identical),
            }
        report["batches"][str(size)] = entry
    bar.close()
    return report


def batch_markdown_table(report: dict) -> str:
    """One row per (batch size, method)."""
    head = ["B", "method", "tok/s", "vs hf", "tokens/row-pass", "passes", "identical"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size, entry in report["batches"].items():
        for name, m in entry["methods"].items():
            same = "n/a (sampled)" if m["identical_to_hf"] is None else ("yes" if m["identical_to_hf"] else "**no**")
            lines.append(f"| {size} | `{name}` | {m['tokens_per_s']:.1f} | {m['speedup_vs_hf']:.2f}x | "
                         f"{m['tokens_per_row_pass']:.2f} | {m['forward_passes']} | {same} |")
    return "\n".join(lines) + "\n"


def write_batch_report(report: dict, json_path, markdown_path=None) -> None:
    with atomic_file(json_path) as fh:
        fh.write(json.dumps(report, indent=2))
    if markdown_path:
        with atomic_file(markdown_path) as fh:
            fh.write(batch_markdown_table(report))
