"""``draftless bench --stream``: a stream of related requests through one engine, with and without a history.

A deployment sees requests one after another, and they repeat themselves (one instruction over many inputs, one
output format). This benchmark builds such a stream from the public data shipped in ``draftless/data/bench`` and
runs it in order through two engines of the same model: ``auto`` without a history and ``auto`` with one
(``history=True``, or a directory). Each request runs plain greedy ``model.generate`` first (the reference every
output must equal), then both engines (alternating which goes first), back to back, so drifts of the machine hit all
three alike. The report gives the speedup of the history per request index, by bucket of request indices and by half
of the stream: the warm-up curve.

Workloads (``--workload``): ``app/streams.py``.
"""
from __future__ import annotations

import json
import time

import torch

from ..hf.compat import model_path
from .prompts import encode_prompt
from .streams import StreamRequest, load_stream


def _hf_greedy(model, ids: torch.Tensor, max_new_tokens: int) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens)
    return seq[0, ids.shape[1]:].tolist(), time.perf_counter() - t0


def _engine_run(engine, ids: torch.Tensor, max_new_tokens: int, namespace: str | None,
                reference: list[int]) -> dict:
    """One request through ``engine``: the report's row for it (schema in ARCHITECTURE.md)."""
    t0 = time.perf_counter()
    out = engine.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, namespace=namespace)
    seconds = time.perf_counter() - t0
    st = out.stats
    return {"new_tokens": len(out.new_tokens), "seconds": seconds, "passes": st.steps,
            "identical_to_hf": list(out.new_tokens) == reference,
            "per_source": {k: [v.accepted, v.proposed] for k, v in st.per_source.items()},
            "nodes": st.tree_nodes, "draft_ms": st.draft_ms, "verify_ms": st.verify_ms}


def _totals(rows: list[dict], key: str) -> dict:
    tokens = sum(r[key]["new_tokens"] for r in rows)
    seconds = sum(r[key]["seconds"] for r in rows)
    passes = sum(r[key]["passes"] for r in rows)
    out = {"new_tokens": tokens, "seconds": round(seconds, 3),
           "tokens_per_s": round(tokens / seconds, 3) if seconds else 0.0,
           "tokens_per_pass": round(tokens / passes, 4) if passes else 0.0}
    if key != "hf" and passes:
        # where an engine's time goes: nodes verified and the draft / verify phases, per pass
        out["nodes_per_pass"] = round(sum(r[key]["nodes"] for r in rows) / passes, 3)
        out["draft_ms_per_pass"] = round(sum(r[key]["draft_ms"] for r in rows) / passes, 3)
        out["verify_ms_per_pass"] = round(sum(r[key]["verify_ms"] for r in rows) / passes, 3)
    return out


def _summary(rows: list[dict]) -> dict:
    """Totals of a slice of the stream for each method, and the ratios that matter."""
    out = {m: _totals(rows, m) for m in ("hf", "auto", "auto+history")}
    out["n_requests"] = len(rows)
    hist, base, hf = out["auto+history"]["seconds"], out["auto"]["seconds"], out["hf"]["seconds"]
    # time ratios over the same tokens (every output is the same): the throughput ratio of the slice
    out["history_vs_auto"] = round(base / hist, 4) if hist else 0.0
    out["auto_vs_hf"] = round(hf / base, 4) if base else 0.0
    out["history_vs_hf"] = round(hf / hist, 4) if hist else 0.0
    return out



def _history_store(drafter):
    """The history store a drafter reads: its own, or the first of its sources' (composites nest)."""
    pending = [drafter]
    while pending:
        d = pending.pop(0)
        if hasattr(d, "store"):
            return d.store
        if hasattr(d, "sources"):
            pending.extend(d.sources())
    raise ValueError(f"drafter {drafter.name!r} reads no history store")


def run_stream_bench(model, tokenizer, requests: list[StreamRequest], max_new_tokens: int = 128,
                     chat: bool = False, history=True, namespace: str | None = "stream", buckets: int = 4,
                     max_nodes: int = 32, model_name: str = "", workload: str = "", progress=None) -> dict:
    """Run the stream (see the module docstring) and return the report dict (schema in ARCHITECTURE.md)."""
    import draftless

    if len(requests) < 2:
        raise ValueError("a stream needs at least two requests")
    # history=None: the stream passes a namespace, which the default history (history="auto") would use
    base = draftless.accelerate(model, drafter="auto", tokenizer=tokenizer, max_nodes=max_nodes, history=None)
    hist = draftless.accelerate(model, drafter="auto", tokenizer=tokenizer, max_nodes=max_nodes, history=history)
    store = _history_store(hist.drafter)
    device = next(model.parameters()).device
    encoded = [encode_prompt(tokenizer, r.text, chat).to(device) for r in requests]

    # Warm-up (kernels, numba, cost curve) on a prompt outside the stream, in a namespace of its own, so the
    # stream's history starts from whatever the store held before (nothing, or a reloaded directory).
    warm = encode_prompt(tokenizer, "Warm-up: count from one to ten.", chat).to(device)
    _hf_greedy(model, warm, 32)
    for engine in (base, hist):
        engine.generate(warm, max_new_tokens=32, do_sample=False, namespace="warm-up")

    rows = []
    for i, (req, ids) in enumerate(zip(requests, encoded)):
        ref, hf_s = _hf_greedy(model, ids, max_new_tokens)
        row = {"index": i, "request_id": req.request_id, "prompt_tokens": int(ids.shape[1]),
               "hf": {"new_tokens": len(ref), "seconds": hf_s, "passes": len(ref)}}
        # the two engines alternate which runs first, so neither always gets the warmer caches
        for key, engine in (("auto", base), ("auto+history", hist))[:: 1 if i % 2 == 0 else -1]:
            row[key] = _engine_run(engine, ids, max_new_tokens, namespace, ref)
        row["history_vs_auto"] = round(row["auto"]["seconds"] / row["auto+history"]["seconds"], 4)
        rows.append(row)
        if progress is not None:
            progress(row)

    half = len(rows) // 2
    size = -(-len(rows) // buckets)
    report = {
        "model": model_name or model_path(model),
        "workload": workload,
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "max_new_tokens": max_new_tokens,
        "chat": chat,
        "n_requests": len(rows),
        "drafters": {"auto": base.drafter.name, "auto+history": hist.drafter.name},
        "identical_to_hf": all(r[m]["identical_to_hf"] for r in rows for m in ("auto", "auto+history")),
        "history_store": {"requests": store.n_requests, "tokens": store.n_tokens, "nbytes": store.nbytes()},
        "all": _summary(rows),
        "first_half": _summary(rows[:half]),
        "second_half": _summary(rows[half:]),
        "buckets": [dict(_summary(rows[a: a + size]), first=a, last=min(a + size, len(rows)) - 1)
                    for a in range(0, len(rows), size)],
        "requests": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }
    return report


def markdown_table(report: dict) -> str:
    """The per-bucket table docs/benchmarks.md shows."""
    lines = ["| requests | hf tok/s | auto tok/s | auto+history tok/s | tokens/pass auto | tokens/pass +history | "
             "history vs auto |", "|---|---|---|---|---|---|---|"]
    for name, part in [(f"{b['first']}-{b['last']}", b) for b in report["buckets"]] + [
            ("first half", report["first_half"]), ("second half", report["second_half"]), ("all", report["all"])]:
        lines.append(f"| {name} | {part['hf']['tokens_per_s']:.1f} | {part['auto']['tokens_per_s']:.1f} | "
                     f"{part['auto+history']['tokens_per_s']:.1f} | {part['auto']['tokens_per_pass']:.2f} | "
                     f"{part['auto+history']['tokens_per_pass']:.2f} | {part['history_vs_auto']:.2f}x |")
    return "\n".join(lines)


def cmd_stream_bench(args, model, tokenizer) -> int:
    """``draftless bench --stream ...`` (the parser is in app/cli.py)."""
    from ..atomic import atomic_file

    requests = load_stream(args.workload, args.data, args.requests)
    print(f"[draftless] stream bench: {len(requests)} {args.workload} requests, {args.max_new_tokens} new tokens, "
          f"history {args.history or 'in memory'}", flush=True)

    def progress(row):
        identical = row["auto"]["identical_to_hf"] and row["auto+history"]["identical_to_hf"]
        print(f"[draftless] request {row['index']}: {row['hf']['new_tokens']} tokens, history vs auto "
              f"{row['history_vs_auto']:.2f}x, identical {identical}", flush=True)

    report = run_stream_bench(model, tokenizer, requests, max_new_tokens=args.max_new_tokens, chat=args.chat,
                              history=args.history or True, max_nodes=args.max_nodes,
                              model_name=args.model or "smollm2-135m", workload=args.workload,
                              progress=progress)
    with atomic_file(args.json) as fh:
        json.dump(report, fh, indent=1)
    table = markdown_table(report)
    if args.markdown:
        with atomic_file(args.markdown) as fh:
            fh.write(table + "\n")
    print(table)
    if not report["identical_to_hf"]:
        print("[draftless] WARNING: some output differs from plain model.generate", flush=True)
        return 1
    return 0
