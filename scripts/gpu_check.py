"""The GPU check: run once on a CUDA machine (about 3-5 minutes), from the repository root, with nothing installed
but torch and transformers (no faiss, pyahocorasick, gguf or numba there, no network, no real weights):

    python scripts/gpu_check.py --out gpu-check.json

1. Greedy identity on CUDA: tree verification through the engine (drafters ``none``, ``ngram``, ``lookahead:8``
   (a wide Jacobi window, as a flat GPU curve would choose), and oracle trees that branch and get rejected
   mid-path) against ``model.generate(do_sample=False)`` on the tiny Llama-, Qwen2-, Gemma 3- (sliding window)
   and GPT-2-shaped models of the test suite, fp32; and a left-padded batch of three rows verified together.
2. t(n) for n = 1..128 after a 512-token cache on a randomly initialised Llama-shaped model of about 1B parameters
   (weights need not be real for timing), in bf16 and fp32, measured the way the engine measures its cost curve.
3. The engine's per-step time outside the model forward (draft, accept, commit, feedback), from its own stats.

Prints a summary and writes everything as JSON. Exits non-zero if any identity check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's draftless, installed or not

import numpy as np  # noqa: E402
import torch  # noqa: E402

import draftless  # noqa: E402
from draftless.engine.cost_curve import CostCurve, measure_cost_curve  # noqa: E402
from draftless.engine.protocol import BaseDrafter  # noqa: E402
from draftless.engine.tree import DraftTree  # noqa: E402
from draftless.hf.attention import inspect_model  # noqa: E402
from draftless.hf.tiny_models import ARCHS, VOCAB, make_tiny_model  # noqa: E402

FLAT = CostCurve((1, 8, 64), (1.0, 1.05, 1.2))  # lets big trees through on tiny models


class BranchingOracle(BaseDrafter):
    """Proposes the reference continuation, corrupted at a random depth, plus a random sibling branch."""

    name = "oracle"

    def __init__(self, reference: list[int], seed: int = 0):
        self.reference = reference
        self.rng = np.random.default_rng(seed)

    def begin(self, prompt_ids):
        self.offset = len(prompt_ids)

    def draft(self, context, budget):
        done = len(context) - self.offset
        truth = self.reference[done: done + 6]
        if not truth:
            return DraftTree.root_only(int(context[-1]))
        cut = int(self.rng.integers(0, len(truth) + 1))
        good = truth[:cut] + [int(self.rng.integers(0, VOCAB))] * (len(truth) - cut)
        noise = [int(t) for t in self.rng.integers(0, VOCAB, 3)]
        return DraftTree.from_paths(int(context[-1]), [good, noise])

    def feedback(self, fb):
        pass


def identity_checks(device: torch.device) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for arch in ARCHS:
        model = make_tiny_model(arch).to(device)
        for trial in range(3):
            motif = rng.integers(0, VOCAB, 4).tolist()
            prompt = (motif * 6)[: 10 + 7 * trial]  # up to 24 tokens: past the Gemma window of 6
            ids = torch.tensor([prompt], device=device)
            with torch.inference_mode():
                want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                                      do_sample=False, pad_token_id=0)
            reference = want[0, len(prompt):].tolist()
            for name in ("none", "ngram", "lookahead:8", "oracle"):
                drafter = BranchingOracle(reference, seed=trial) if name == "oracle" else name
                fast = draftless.accelerate(model, drafter=drafter, cost_curve=FLAT)
                got = fast.generate(ids, max_new_tokens=40)
                same = torch.equal(got.sequences.to(device), want)
                rows.append({"arch": arch, "trial": trial, "drafter": name, "identical": bool(same),
                             "mean_accepted": round(got.stats.mean_accepted, 3)})
        rows.append(batch_check(model, arch, rng, device))
    return rows


def batch_check(model, arch: str, rng, device: torch.device) -> dict:
    """Three left-padded rows of different lengths, verified together, against ``model.generate`` on the batch."""
    lengths = (5, 13, 21)
    ids = torch.zeros((3, max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        motif = rng.integers(1, VOCAB, 3).tolist()
        ids[r, -n:] = torch.tensor((motif * 8)[:n])
        mask[r, -n:] = 1
    ids, mask = ids.to(device), mask.to(device)
    with torch.inference_mode():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)
    fast = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT)
    got = fast.generate(ids, attention_mask=mask, max_new_tokens=30, pad_token_id=0)
    return {"arch": arch, "trial": "batch of 3", "drafter": "ngram",
            "identical": bool(torch.equal(got.sequences, want)), "mean_accepted": round(got.stats.mean_accepted, 3)}


def billion_llama(dtype: torch.dtype, device: torch.device):
    import transformers as tf

    config = tf.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                            num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096,
                            attn_implementation="sdpa")
    with torch.device(device):
        model = tf.LlamaForCausalLM(config).to(dtype)
    return model.eval()


def cost_curves(device: torch.device, sizes) -> dict:
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = billion_llama(dtype, device)
        params = sum(p.numel() for p in model.parameters())
        curve = measure_cost_curve(model, inspect_model(model), sizes=sizes, prefix_len=512, repeats=5)
        out[str(dtype).replace("torch.", "")] = {"parameters": params, "sizes": list(curve.sizes),
                                                 "ms": [round(m, 3) for m in curve.ms],
                                                 "relative": {str(k): v for k, v in curve.relative().items()}}
        overhead = engine_overhead(model, device)
        out[str(dtype).replace("torch.", "")]["engine_step_outside_model_ms"] = overhead
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def engine_overhead(model, device) -> dict:
    """Per-step ms the engine spends outside the verification forward, for a drafter-free and an n-gram run."""
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, 64), generator=torch.Generator().manual_seed(0)).repeat(1, 4).to(device)
    result = {}
    for spec in ("none", "ngram"):
        fast = draftless.accelerate(model, drafter=spec, cost_curve=FLAT)
        fast.generate(prompt, max_new_tokens=8)  # warm-up
        out = fast.generate(prompt, max_new_tokens=64)
        s = out.stats
        outside = (s.total_ms - s.prefill_ms - s.verify_ms) / max(s.steps, 1)
        result[spec] = {"steps": s.steps, "outside_model_ms_per_step": round(outside, 3),
                        "verify_ms_per_step": round(s.verify_ms / max(s.steps, 1), 3),
                        "mean_accepted": round(s.mean_accepted, 3)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--max-n", type=int, default=128)
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only to dry-run the script")
    parser.add_argument("--skip-timing", action="store_true", help="identity checks only (a quick dry run)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine (--device cpu dry-runs it)")
        return 2
    device = torch.device(args.device)
    t0 = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
              "torch": torch.__version__}
    report["identity"] = identity_checks(device)
    failures = [r for r in report["identity"] if not r["identical"]]
    print(f"greedy identity on CUDA: {len(report['identity']) - len(failures)}/{len(report['identity'])} identical")
    sizes = tuple(sorted(set(list(range(1, 17)) + [20, 24, 32, 48, 64, 96, 128]) & set(range(1, args.max_n + 1))))
    report["cost_curves"] = {} if args.skip_timing else cost_curves(device, sizes)
    for dtype, data in report["cost_curves"].items():
        rel = data["relative"]
        print(f"{dtype}: t(1) = {data['ms'][0]:.2f} ms; t(n)/t(1): " +
              ", ".join(f"{n}: {rel[str(n)]:.2f}" for n in (2, 4, 8, 16, 32, 64, 128) if str(n) in rel))
        print(f"{dtype}: engine outside the model per step: {data['engine_step_outside_model_ms']}")
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} in {report['wall_s']} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
