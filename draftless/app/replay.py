"""Judge drafter settings on a recorded stream in seconds: replay its greedy outputs without running the target.

    python -m draftless.app.replay record --model smollm2-135m --chat --workload mbpp-tests --requests 32 \\
        --out streams/smollm2-mbpp-tests.json
    python -m draftless.app.replay replay --model smollm2-135m streams/smollm2-mbpp-tests.json \\
        ngram+sam ngram+sam+history --history-option min_match=2
    python -m draftless.app.replay coverage streams/smollm2-mbpp-tests.json

(``scripts/replay_stream.py`` is the same command.)

``record`` runs a ``draftless bench --stream`` workload once through ``auto`` and keeps each request's prompt and
greedy output token ids (greedy output does not depend on the drafter, so one recording serves every setting).

``replay`` sends the recorded requests, in order and in one namespace, through an engine built for each drafter
spec, step by step through the engine's own ``Step`` (``draftless.engine.step``): the spec's drafter drafts from the
committed tokens, the step calibrates and prunes the tree (with the model's measured cost curve), the recorded
output decides what is accepted (the longest path that follows it, plus the bonus token: exactly what greedy
verification would accept), ``commit`` writes it, and the step learns from it as a real step does (calibration,
draft-time estimate, the drafter's feedback). A pass is costed at the curve's t(n) plus the measured draft and
feedback time. It
prints tokens per pass, nodes per pass and the modelled speedup over plain decoding per half of the stream, and
the modelled ratio of the last spec against the first.

``coverage`` reads a recording only (no model): per half of the stream, how many output tokens lie in verbatim
repeats (4 tokens or more, parsed greedily longest first) of earlier requests' contexts and how many in repeats of
the request's own context: an upper bound on what a history can add beyond the request's own text.

What it cannot model: drafters that read the target's logits or hidden states (``recycle``, model drafters), which
get no logits here, and what real passes cost beyond the measured curve (``engine/observed_costs.py``). On the
SmolLM2 ``mbpp-tests`` stream it modelled the history's gain at 1.33x where the real run with ``recycle`` gave
1.15x: use it to rank settings, then measure the best with ``draftless bench --stream``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ..api import accelerate
from ..engine.accept import Acceptance
from ..engine.protocol import RequestInfo, begin_request, end_request
from ..engine.step import RequestState, Step, commit
from ..hf.loading import load_model
from ..paths import bench_data_dir
from .prompts import encode_prompt
from .streams import WORKLOADS, load_stream

NAMESPACE = "replay"


def record(args) -> None:
    model, tok = load_model(args.model)
    engine = accelerate(model, drafter="auto", tokenizer=tok)
    rows = []
    for i, req in enumerate(load_stream(args.workload, args.data, args.requests)):
        ids = encode_prompt(tok, req.text, args.chat)
        out = engine.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        rows.append({"request_id": req.request_id, "prompt": ids[0].tolist(),
                     "output": [int(t) for t in out.new_tokens]})
        print(f"{i}: {req.request_id} {len(out.new_tokens)} tokens", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "workload": args.workload, "chat": args.chat,
                                          "requests": rows}))


def recorded_acceptance(tree, reference: list[int]) -> Acceptance:
    """What greedy verification accepts of ``tree`` when the target's output goes on as ``reference``: the longest
    root path whose tokens follow it (node indices, root first), then the next reference token as the bonus."""
    children = tree.children()
    path = [0]
    while len(path) - 1 < len(reference):
        want = reference[len(path) - 1]
        nxt = next((c for c in children[path[-1]] if int(tree.tokens[c]) == want), None)
        if nxt is None:
            break
        path.append(nxt)
    # a path through the whole reference has no bonus left: ``commit`` cuts at the token limit before it
    bonus = reference[len(path) - 1] if len(path) - 1 < len(reference) else 0
    return Acceptance(np.asarray(path, dtype=np.int64), int(bonus))


def replay_requests(engine, requests: list[dict]) -> list[dict]:
    """Per request: output tokens, passes, nodes, modelled ms, plain-decoding ms (see the module docstring).

    Each request is a greedy ``RequestState`` limited to its recorded output, decoded by the engine's ``Step`` with
    the recorded tokens in place of the verification pass (whose modelled time, the curve's t(n), stands in the
    row's ``verify_ms``)."""
    curve = engine.cost_curve
    step = Step(engine)
    drafter = engine.drafter
    info = RequestInfo(NAMESPACE)
    results = []
    for req in requests:
        out = [int(t) for t in req["output"]]
        state = RequestState.greedy(np.asarray(req["prompt"], dtype=np.int64), len(out))
        begin_request(drafter, state.context[: state.length].copy(), info)
        while not state.finished:
            draft = step.draft(state, drafter)
            acc = recorded_acceptance(draft.tree, out[len(state.produced):])
            committed = commit(state, draft.tree, acc)
            step.learn(state, drafter, draft, acc, committed, logits=None, hidden=None,
                       verify_ms=float(curve.cost(len(draft.tree))), accept_ms=0.0)
        end_request(drafter, state.context[: state.length].copy(), info)
        stats = state.stats
        results.append({"tokens": len(out), "passes": stats.steps, "nodes": stats.tree_nodes,
                        "ms": stats.verify_ms + stats.draft_ms + stats.feedback_ms,
                        "plain_ms": float(curve.cost(1)) * len(out)})
    return results


def _longest_prefix_in(texts: list[list[int]], needle: list[int]) -> int:
    """Length of the longest prefix of ``needle`` that occurs somewhere in one of ``texts`` (a plain scan: the
    recordings are a few thousand tokens)."""
    best = 0
    for text in texts:
        for i, token in enumerate(text):
            if token != needle[0]:
                continue
            n = 0
            while n < len(needle) and i + n < len(text) and text[i + n] == needle[n]:
                n += 1
            best = max(best, n)
    return best


def repeat_coverage(requests: list[dict], min_run: int = 4) -> list[dict]:
    """Per request: output tokens, and those covered by verbatim runs (>= ``min_run`` tokens, parsed greedily) found
    in earlier requests' contexts (``from_history``) or in its own prompt and output so far (``from_own``)."""
    rows = []
    for k, req in enumerate(requests):
        earlier = [r["prompt"] + r["output"] for r in requests[:k]]
        out, own = req["output"], req["prompt"]
        p = from_history = from_own = 0
        while p < len(out):
            in_history = _longest_prefix_in(earlier, out[p:]) if earlier else 0
            in_own = _longest_prefix_in([own + out[:p]], out[p:])
            run = max(in_history, in_own)
            if run < min_run:
                p += 1
                continue
            if in_history > in_own:
                from_history += run
            else:
                from_own += run
            p += run
        rows.append({"tokens": len(out), "from_history": from_history, "from_own": from_own})
    return rows


def coverage(args) -> None:
    requests = json.loads(Path(args.recording).read_text())["requests"]
    rows = repeat_coverage(requests, args.min_run)
    half = len(rows) // 2
    for name, part in (("first half", rows[:half]), ("second half", rows[half:])):
        tokens = max(1, sum(r["tokens"] for r in part))  # a one-request recording has an empty first half
        print(f"{name:11s}: {tokens} output tokens, {sum(r['from_history'] for r in part) / tokens:.0%} in repeats of "
              f"earlier requests, {sum(r['from_own'] for r in part) / tokens:.0%} in repeats of the request's own "
              f"text (runs of {args.min_run}+ tokens)")


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not _:
            raise SystemExit(f"--history-option takes NAME=VALUE, got {pair!r}")
        options[key] = json.loads(value)
    return options


def set_history_options(drafter, options: dict) -> None:
    """Set ``--history-option`` values on a ``HistoryDrafter``: fields of its ``SuffixDraftPolicy`` (``min_match``,
    ``max_depth``, ...) or its own attributes (``max_segments``, ``warmup_requests``)."""
    fields = {f.name for f in dataclasses.fields(drafter.policy)}
    for key, value in options.items():
        if key in fields:
            drafter.policy = dataclasses.replace(drafter.policy, **{key: value})
        elif key != "policy" and hasattr(drafter, key) and not key.startswith("_"):
            setattr(drafter, key, value)
        else:
            raise SystemExit(f"the history drafter has no option {key!r}")


def replay(args) -> None:
    model, tok = load_model(args.model)
    data = json.loads(Path(args.recording).read_text())
    requests = data["requests"]
    options = _parse_options(args.history_option)
    half = len(requests) // 2
    results = {}
    for spec in args.specs:
        # history=None: a spec replays exactly the sources it names (``auto`` would add the default history)
        engine = accelerate(model, drafter=spec, tokenizer=tok, learn_costs=False, history=None)
        for source in getattr(engine.drafter, "drafters", [engine.drafter]):
            if source.name == "history":
                set_history_options(source, options)
        results[spec] = rows = replay_requests(engine, requests)
        for name, part in (("first half", rows[:half]), ("second half", rows[half:]), ("all", rows)):
            tokens, passes = sum(r["tokens"] for r in part), sum(r["passes"] for r in part)
            print(f"{spec:32s} {name:11s}: {tokens / passes:.3f} tokens/pass, "
                  f"{sum(r['nodes'] for r in part) / passes:.1f} nodes/pass, modelled speedup "
                  f"{sum(r['plain_ms'] for r in part) / sum(r['ms'] for r in part):.3f}x", flush=True)
    if len(args.specs) >= 2:
        first, last = results[args.specs[0]], results[args.specs[-1]]
        for name, part in (("first half", slice(0, half)), ("second half", slice(half, None))):
            ratio = sum(r["ms"] for r in first[part]) / sum(r["ms"] for r in last[part])
            print(f"{args.specs[-1]} vs {args.specs[0]}, {name}: {ratio:.3f}x modelled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run a stream workload once and keep its greedy outputs")
    rec.add_argument("--model", default="smollm2-135m")
    rec.add_argument("--chat", action="store_true")
    rec.add_argument("--workload", default="mbpp", choices=WORKLOADS)
    rec.add_argument("--requests", type=int, default=32)
    rec.add_argument("--max-new-tokens", type=int, default=128)
    rec.add_argument("--data", default=str(bench_data_dir()))
    rec.add_argument("--out", required=True)
    rec.set_defaults(func=record)
    rep = sub.add_parser("replay", help="replay a recording through drafter specs")
    rep.add_argument("--model", default="smollm2-135m", help="the recording's model (its cost curve is used)")
    rep.add_argument("recording")
    rep.add_argument("specs", nargs="+", help="drafter spec strings, e.g. ngram+sam ngram+sam+history")
    rep.add_argument("--history-option", action="append", default=[], metavar="NAME=VALUE",
                     help="set a HistoryDrafter option (JSON value): a policy field such as min_match=2, or "
                          "max_segments / warmup_requests")
    rep.set_defaults(func=replay)
    cov = sub.add_parser("coverage", help="how much of a recording's output repeats earlier requests verbatim")
    cov.add_argument("recording")
    cov.add_argument("--min-run", type=int, default=4, help="shortest verbatim run counted (tokens)")
    cov.set_defaults(func=coverage)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
