"""The ``draftless`` command: ``generate``, ``bench``, ``build``, ``profile``."""
from __future__ import annotations

import argparse
import sys
import time

from ..paths import bench_data_dir  # standard library only
from .streams import WORKLOADS  # standard library only: the parser stays light

DEFAULT_PROMPT = (  # an extraction task: the kind of prompt where reusing context pays off most
    "Extract the sentences that mention a year from the text below.\n\n"
    "The library was founded in 1901 by a group of teachers. It moved to a larger building on Main Street in 1935. "
    "Its reading room is open every day. A new wing for children's books was added in 1962. "
    "Today the library lends more than a million books a year."
)


def _load(args):
    from ..hf.loading import load_model

    return load_model(args.model, attn_implementation=args.attn)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="local HF folder, .gguf file, or shipped model name (smollm2-135m [default], gemma3-270m)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")


def _add_grammar_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json-schema", default=None, metavar="FILE",
                       help="the output is JSON matching this schema (needs draftless[grammar])")
    group.add_argument("--regex", default=None, help="the output matches this regular expression")
    group.add_argument("--grammar", default=None, metavar="FILE", help="the output follows this Lark grammar")


def _grammar_spec(args) -> dict | None:
    """The ``grammar_spec`` (``app/prompts.py``) the grammar flags name, or None."""
    import json
    from pathlib import Path

    def read(path: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc

    if args.json_schema:
        try:
            return {"json_schema": json.loads(read(args.json_schema))}
        except ValueError as exc:
            raise ValueError(f"{args.json_schema} is not JSON: {exc}") from exc
    if args.regex:
        return {"regex": args.regex}
    if args.grammar:
        return {"lark": read(args.grammar)}
    return None


def cmd_generate(args) -> int:
    import torch

    import draftless

    from .prompts import encode_prompt

    spec = _grammar_spec(args)  # a bad grammar flag fails before the model loads
    model, tokenizer = _load(args)
    chat = args.chat if args.chat is not None else bool(getattr(tokenizer, "chat_template", None))
    ids = encode_prompt(tokenizer, args.prompt, chat).to(next(model.parameters()).device)
    fast = draftless.accelerate(model, drafter=args.drafter, tokenizer=tokenizer, datastore=args.datastore,
                                draft_model=args.draft_model, max_nodes=args.max_nodes, verbose=args.verbose,
                                history=args.history, compile=args.compile)
    if args.verbose:
        print(f"[draftless] cost curve t(n)/t(1): {fast.cost_curve.relative()}", flush=True)
    sample = args.temperature is not None and args.temperature > 0
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=sample)
    if sample:
        gen_kwargs.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    grammar = None
    if spec is not None:
        from ..grammar import GrammarLogitsProcessor
        from .prompts import compile_grammar_spec, grammar_compiler_for

        grammar = compile_grammar_spec(grammar_compiler_for(model, tokenizer), spec)

    def constrained(kwargs: dict) -> dict:  # a fresh processor per call: each follows one generation
        return {**kwargs, "logits_processor": [GrammarLogitsProcessor(grammar)]} if grammar is not None else kwargs

    if args.compare:  # warm up both paths so the timing compares steady states
        fast.generate(ids, **constrained(dict(max_new_tokens=8)))
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), **constrained(dict(max_new_tokens=8)),
                           do_sample=False)
    out = fast.generate(ids, namespace=args.namespace, **constrained(gen_kwargs))
    print(tokenizer.decode(out.new_tokens, skip_special_tokens=True))
    print(f"[draftless] drafter={fast.drafter.name} {out.stats.summary()}")
    if args.compare:
        t0 = time.perf_counter()
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), **constrained(gen_kwargs))
        hf_s = time.perf_counter() - t0
        hf_tokens = ref.shape[1] - ids.shape[1]
        hf_rate = hf_tokens / hf_s
        same = ref[0, ids.shape[1]:].tolist() == out.new_tokens
        curve = fast.cost_curve
        print(f"[draftless] plain model.generate: {hf_rate:.1f} tok/s; draftless: {out.stats.tokens_per_s:.1f} tok/s; "
              f"speedup {out.stats.tokens_per_s / hf_rate:.2f}x; "
              f"verification cost t(8)/t(1) = {curve.cost(8) / curve.cost(1):.2f} ({curve.path_for(8)} path"
              f"{_running_note(fast)}); "
              + (f"output identical: {same}" if not sample else "sampled (outputs differ by design)"))
    return 0


MIN_PASSES_FOR_RUNNING_CURVE = 32


def _running_note(fast) -> str:
    """``, running 1.45``: t(8)/t(1) of the curve the engine's passes followed (engine/observed_costs.py), when it
    learnt one."""
    if fast.observed_passes < MIN_PASSES_FOR_RUNNING_CURVE:  # a short run's few passes say little
        return ""
    running = fast.running_cost_curve
    return f", {running.cost(8) / running.cost(1):.2f} as run"


def cmd_bench(args) -> int:
    from dataclasses import replace

    from .bench import markdown_table, run_bench, write_report
    from .prompts import load_prompt_file

    if args.stream:
        from .stream_bench import cmd_stream_bench

        return cmd_stream_bench(args, *_load(args))
    if not args.prompts:
        raise SystemExit("bench needs --prompts FILE (or --stream for the stream of related requests)")
    model, tokenizer = _load(args)
    prompts = load_prompt_file(args.prompts, per_category=args.per_category, limit=args.limit)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.categories:
        wanted = set(args.categories.split(","))
        prompts = [p for p in prompts if p.category in wanted]
    spec = _grammar_spec(args)
    if args.structured and spec:
        raise ValueError("--structured brings its own schemas: drop --json-schema / --regex / --grammar")
    if args.structured:
        from .grammar_workloads import structured_prompts

        prompts = structured_prompts(prompts, [w.strip() for w in args.structured.split(",")])
    elif spec:
        prompts = [replace(p, grammar_spec=spec) for p in prompts]
    if args.batch_size and any(p.grammar_spec for p in prompts):
        raise ValueError("--batch-size with a grammar is not benchmarked yet: run the grammar bench one row at a "
                         "time")
    print(f"[draftless] bench: {len(prompts)} prompts x {len(methods)} methods, {args.max_new_tokens} new tokens",
          flush=True)
    if (args.top_k is not None or args.top_p is not None) and args.temperature is None:
        raise SystemExit("--top-k / --top-p need --temperature (the bench samples only when given one)")
    sampling = None if args.temperature is None else {"temperature": args.temperature, "top_k": args.top_k,
                                                      "top_p": args.top_p}
    if args.batch_size:
        return _batch_bench(args, model, tokenizer, prompts, methods, sampling)
    report = run_bench(model, tokenizer, prompts, methods, max_new_tokens=args.max_new_tokens, chat=args.chat,
                       datastore=args.datastore, draft_model=args.draft_model, max_nodes=args.max_nodes,
                       model_name=args.model or "smollm2-135m", sampling=sampling)
    write_report(report, args.json, args.markdown, args.plot)
    print(markdown_table(report))
    if args.verbose and "cost_curve_ms" in report:
        print(f"[draftless] cost curve (ms): {report['cost_curve_ms']}")
    return 0


def _batch_bench(args, model, tokenizer, prompts, methods, sampling) -> int:
    from .batch_bench import batch_markdown_table, run_batch_bench, write_batch_report

    try:
        sizes = [int(b) for b in args.batch_size.split(",") if b.strip()]
    except ValueError as exc:
        raise SystemExit(f"--batch-size takes comma-separated integers, got {args.batch_size!r}") from exc
    report = run_batch_bench(model, tokenizer, prompts, methods, sizes, max_new_tokens=args.max_new_tokens,
                             chat=args.chat, sampling=sampling, datastore=args.datastore, max_nodes=args.max_nodes,
                             draft_model=args.draft_model, model_name=args.model or "smollm2-135m")
    write_batch_report(report, args.json, args.markdown)
    print(batch_markdown_table(report))
    return 0


def cmd_build(args) -> int:
    from ..hf.loading import load_tokenizer
    from ..stores.build import build_sharded_store, build_store

    sharded = args.shards is not None or (args.ray and args.kind != "dense")
    if sharded and args.kind != "rest":
        raise SystemExit("--shards builds 'rest' stores only; --ray builds 'rest' and 'dense' stores")
    if args.shards is not None and args.shards < 1:
        raise SystemExit("--shards takes a positive number")
    if (args.address or args.num_cpus) and not args.ray:
        raise SystemExit("--address / --num-cpus go with --ray")
    tokenizer = load_tokenizer(args.model)
    if args.ray and args.kind == "dense":
        from ..hf.loading import DEFAULT_MODEL
        from ..stores.ray_dense_build import build_dense_store_ray

        build_dense_store_ray(args.corpus, tokenizer, args.out, model=args.model or DEFAULT_MODEL,
                              fields=args.field or None, glob=args.glob, exclude=args.exclude or (),
                              exclude_overlap=args.exclude_overlap, dim=args.dim, index=args.index,
                              max_tokens=args.max_tokens, address=args.address, num_cpus=args.num_cpus)
        return 0
    if args.ray:
        from ..stores.ray_build import build_sharded_store_ray

        build_sharded_store_ray(args.corpus, tokenizer, args.out, shards=args.shards or 1, fields=args.field or None,
                                glob=args.glob, exclude=args.exclude or (), address=args.address,
                                num_cpus=args.num_cpus, sa_method=args.sa_method,
                                exclude_overlap=args.exclude_overlap)
        return 0
    if sharded:
        build_sharded_store(args.corpus, tokenizer, args.out, args.shards, fields=args.field or None, glob=args.glob,
                            exclude=args.exclude or (), exclude_overlap=args.exclude_overlap, sa_method=args.sa_method)
        return 0
    opts = {"sa_method": args.sa_method} if args.kind == "rest" and args.sa_method else {}
    if args.kind == "dense":
        from ..hf.loading import DEFAULT_MODEL

        opts = dict(model=args.model or DEFAULT_MODEL, dim=args.dim, index=args.index, max_tokens=args.max_tokens)
    build_store(args.kind, args.corpus, tokenizer, args.out, fields=args.field or None, glob=args.glob,
                exclude=args.exclude or (), exclude_overlap=args.exclude_overlap, **opts)
    return 0


def cmd_profile(args) -> int:
    import json

    import torch

    from ..atomic import atomic_file
    from .profile import format_report, profile_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, _ = _load(args)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    lengths = tuple(int(x) for x in args.cache_lengths.split(","))
    report = profile_model(model, sizes=sizes, cache_lengths=lengths, repeats=args.repeats,
                           progress=lambda L: print(f"[draftless] profiled cache length {L}", flush=True))
    print(format_report(report))
    if args.json:
        with atomic_file(args.json) as fh:
            json.dump(report, fh, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ..index.dense_index import INDEX_TYPES
    from ..stores.kinds import STORE_KINDS

    parser = argparse.ArgumentParser(prog="draftless", description="Lossless, training-free speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text and print it with a stats line")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text (default: a built-in extraction task)")
    g.add_argument("--chat", dest="chat", action="store_true", default=None,
                   help="wrap the prompt in the chat template (default: on when the tokenizer has one)")
    g.add_argument("--raw", dest="chat", action="store_false", help="feed the prompt text as is")
    g.add_argument("--drafter", default="auto", help="drafter spec: ngram, sam, recycle, sam+recycle, auto, ...")
    g.add_argument("--datastore", default=None, help="a datastore directory that auto adds as a source")
    g.add_argument("--draft-model", default=None, metavar="self|PATH",
                   help="a model drafter that auto combines with retrieval (self = the target with layers skipped)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default: greedy)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--max-nodes", type=int, default=32, help="largest tree one pass may verify")
    g.add_argument("--compare", action="store_true", help="also run plain model.generate and print the speedup")
    g.add_argument("--verbose", action="store_true")
    g.add_argument("--history", default=None, metavar="DIR",
                   help="remember requests across runs in DIR (reloaded first, this request added after)")
    g.add_argument("--namespace", default=None, help="whose history the request reads and extends")
    g.add_argument("--compile", action="store_true",
                   help="verify on the compiled path (torch.compile; CPU fp32; minutes of compiling on first use)")
    _add_grammar_args(g)
    _add_model_args(g)
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="benchmark methods against model.generate on a prompt file")
    b.add_argument("--prompts", default=None, help="Spec-Bench style jsonl (question_id, category, turns)")
    b.add_argument("--methods", default="hf,hf-pld,ngram",
                   help="comma-separated: hf, hf-pld, drafter specs (SPEC@compiled: on the compiled path)")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--per-category", type=int, default=None, help="first K prompts of each category")
    b.add_argument("--limit", type=int, default=None, help="at most K prompts in all (categories round-robin)")
    b.add_argument("--categories", default=None, help="comma-separated categories to keep")
    b.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    b.add_argument("--datastore", default=None, help="a datastore directory that auto adds as a source")
    b.add_argument("--draft-model", default=None, metavar="self|PATH",
                   help="a model drafter auto combines with retrieval")
    b.add_argument("--max-nodes", type=int, default=32)
    b.add_argument("--json", required=True, help="write the report here")
    b.add_argument("--markdown", default=None, help="also write a markdown table here")
    b.add_argument("--plot", default=None, help="also write a PNG of speedups per category here")
    b.add_argument("--batch-size", default=None, metavar="B[,B...]",
                   help="left-padded batches of B prompts (e.g. 1,4,8), against model.generate at the same B")
    b.add_argument("--temperature", type=float, default=None,
                   help="sample at this temperature in every method (default: greedy; outputs then differ)")
    b.add_argument("--top-k", type=int, default=None, help="with --temperature: top-k for every method")
    b.add_argument("--top-p", type=float, default=None, help="with --temperature: top-p for every method")
    b.add_argument("--verbose", action="store_true")
    _add_grammar_args(b)
    b.add_argument("--structured", default=None, metavar="W[,W...]",
                   help="structured-output workloads over the prompts (tool-call, extraction, plan): each prompt "
                        "under each workload, with that workload's JSON schema")
    b.add_argument("--stream", action="store_true",
                   help="a stream of related requests through one engine, auto with and without a history "
                        "(app/stream_bench.py; --workload, --requests, --history)")
    b.add_argument("--workload", default="gsm8k", choices=WORKLOADS,
                   help="--stream: which stream (app/streams.py WORKLOADS; read from --data)")
    b.add_argument("--requests", type=int, default=32, help="--stream: requests in the stream")
    b.add_argument("--data", default=str(bench_data_dir()),
                   help="--stream: folder with gsm8k_train.jsonl, mbpp_train.jsonl (default: the shipped copies)")
    b.add_argument("--history", default=None, metavar="DIR",
                   help="--stream: keep the history in DIR (reloaded first, saved after each request)")
    _add_model_args(b)
    b.set_defaults(func=cmd_bench)

    s = sub.add_parser("build", help="build a datastore from a corpus")
    s.add_argument("--kind", required=True, choices=STORE_KINDS, help="store kind")
    s.add_argument("--corpus", required=True, nargs="+", help="jsonl / text files or directories")
    s.add_argument("--field", action="append", help="jsonl field to read (repeatable; joined per record)")
    s.add_argument("--glob", default=None, help="file pattern inside directories, e.g. '*.py'")
    s.add_argument("--exclude", action="append", help="path fragment to skip inside directories (repeatable)")
    s.add_argument("--exclude-overlap", default=None, metavar="PROMPTS.jsonl",
                   help="leave out documents sharing a word 13-gram with any prompt of this evaluation file")
    s.add_argument("--dim", type=int, default=96, help="dense: PCA dimension of the keys")
    s.add_argument("--index", default="ivf", choices=INDEX_TYPES,
                   help="dense: FAISS index type (ivfpq: compressed, under 32 bytes per token on large corpora)")
    s.add_argument("--max-tokens", type=int, default=None, help="dense: index only the first N corpus tokens")
    s.add_argument("--shards", type=int, default=None, metavar="N",
                   help="rest: a sharded store of N shards cut at document boundaries (built one shard at a time)")
    s.add_argument("--ray", action="store_true",
                   help="rest: build the shards on Ray (needs the 'ray' extra): parallel reading and tokenizing, one "
                        "task per shard index; dense: the model pass on Ray Data, one model copy per CPU")
    s.add_argument("--address", default=None, help="--ray: the Ray cluster to join (default: start one here)")
    s.add_argument("--num-cpus", type=int, default=None, help="--ray: CPUs of the local Ray instance (default: all)")
    s.add_argument("--sa-method", default=None, choices=["divsufsort", "doubling"],
                   help="rest: suffix-array construction (default divsufsort when pydivsufsort is installed)")
    s.add_argument("--out", required=True, help="output directory (written atomically)")
    s.add_argument("--model", default=None, help="model whose tokenizer the store uses")
    s.set_defaults(func=cmd_build)

    f = sub.add_parser("profile", help="time verification passes t(n) by stage, cache length and path")
    f.add_argument("--sizes", default="1,2,3,4,6,8,12,16,24,32,48,64", help="tree sizes n to time")
    f.add_argument("--cache-lengths", default="128,512,1024", help="cached prefix lengths to time them after")
    f.add_argument("--repeats", type=int, default=5)
    f.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own setting)")
    f.add_argument("--json", default=None, help="write the full report here")
    _add_model_args(f)
    f.set_defaults(func=cmd_profile)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..hf.compat import prefer_grouped_query_sdpa

    prefer_grouped_query_sdpa()  # this process is ours: tree passes without the per-head copy of the cache
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        from ..hf.loading import ModelNotAvailable

        if isinstance(exc, (ModelNotAvailable, ValueError, FileNotFoundError)):
            print(f"draftless: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
