"""The headline invariant: greedy output is token-identical to ``model.generate(do_sample=False)``, for every
drafter and every tiny architecture, including EOS inside a draft and cuts at ``max_new_tokens``."""
import zlib

import numpy as np
import pytest
import torch
from conftest import ARCHS, VOCAB, OracleDrafter, RecordingStreamer

import draftless
from draftless.drafters.spec import DrafterContext, build_drafter
from draftless.engine.cost_curve import CostCurve

DRAFTER_SPECS = ["none", "ngram", "recycle", "ngram+recycle", "sam", "sam+recycle", "ngram+sam+recycle", "auto",
                 "history", "auto+history", "lookahead:3", "lookahead:2+sam+recycle", "ngram+grammar"]
# A synthetic curve that makes big trees worth it, so the adaptive budget chooser is exercised on tiny models.
FLAT_CURVE = CostCurve((1, 8, 64), (1.0, 1.1, 1.5))
# The same curve, every size verified on one of the fast paths (draftless.fastpath): the skinny kernel, or oneDNN
# on packed weights.
FAST_PATH_CURVES = {path: CostCurve((1, 8, 64), (1.0, 1.1, 1.5), (path,) * 3) for path in ("skinny", "packed")}


def prompts(seed, n=4):
    rng = np.random.default_rng(seed)
    out = [[int(rng.integers(0, VOCAB))]]  # a one-token prompt: empty prefill
    for _ in range(n - 1):
        motif = rng.integers(0, VOCAB, int(rng.integers(2, 6))).tolist()
        body = (motif * 4)[: int(rng.integers(4, 20))] + rng.integers(0, VOCAB, int(rng.integers(0, 5))).tolist()
        out.append(body)
    return out


def reference(model, prompt, max_new, eos=None):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        # an explicit all-ones mask: otherwise generate infers padding wherever the prompt holds the pad id
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                              eos_token_id=eos, pad_token_id=0)


def drafter_from_spec(spec, model):
    if "sam" in spec or spec == "auto":
        pytest.importorskip("draftless.drafters.sam")
    return build_drafter(spec, DrafterContext(model=model))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", DRAFTER_SPECS)
def test_greedy_identical_for_every_drafter(tiny_models, arch, spec):
    model = tiny_models(arch)
    fast = draftless.accelerate(model, drafter=drafter_from_spec(spec, model), cost_curve=FLAT_CURVE)
    # crc32, not hash(): str hashes change with PYTHONHASHSEED, and a failure must reproduce
    for i, prompt in enumerate(prompts(zlib.crc32(f"{arch}/{spec}".encode()) % 1000)):
        max_new = [37, 1, 24, 50][i % 4]
        want = reference(model, prompt, max_new)
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=max_new)
        assert torch.equal(got.sequences, want), (spec, arch, prompt)
        assert got.stats.new_tokens == max_new


@pytest.mark.parametrize("path", sorted(FAST_PATH_CURVES))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", ["ngram", "sam+recycle"])
def test_greedy_identical_on_a_fast_path(tiny_models, arch, spec, path):
    model = tiny_models(arch)
    fast = draftless.accelerate(model, drafter=drafter_from_spec(spec, model), cost_curve=FAST_PATH_CURVES[path])
    if path not in fast.verification.available:
        pytest.skip(f"the {path} path is not available on this build")
    for i, prompt in enumerate(prompts(zlib.crc32(f"{path}/{arch}/{spec}".encode()) % 1000)):
        max_new = [37, 1, 24, 50][i % 4]
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=max_new)
        assert torch.equal(got.sequences, reference(model, prompt, max_new)), (spec, arch, prompt)
    if path == "packed" and arch != "gpt2":  # gpt2's Conv1D layers are not F.linear: nothing to pack
        assert fast.verification.packed_bytes > 0  # the passes did run on packed weights


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_greedy_identical_with_oracle_trees_eos_and_length_cuts(tiny_models, arch, adaptive):
    """Trees holding the true continuation (cut at random depths) accept deep, non-contiguous paths."""
    model = tiny_models(arch)
    for seed, prompt in enumerate(prompts(7, n=5)):
        full = reference(model, prompt, 40)[0, len(prompt):].tolist()
        drafter = OracleDrafter(prompt + full, VOCAB, seed=seed)
        fast = draftless.accelerate(model, drafter=drafter, adaptive=adaptive, cost_curve=FLAT_CURVE, max_nodes=24)
        for max_new in (40, 13, 2):
            got = fast.generate(torch.tensor([prompt]), max_new_tokens=max_new)
            assert got.new_tokens == full[:max_new]
        # EOS inside a draft: generation must stop right after the first EOS, as model.generate does
        eos = full[min(len(full) - 1, 5 + seed)]
        want = reference(model, prompt, 40, eos=eos)
        got = fast.generate(torch.tensor([prompt]), max_new_tokens=40, eos_token_id=eos)
        assert torch.equal(got.sequences, want)
        assert got.new_tokens[-1] == eos and got.new_tokens.count(eos) == 1


def test_stats_and_streamer(tiny_models):
    model = tiny_models("llama")
    prompt = prompts(3)[2]
    full = reference(model, prompt, 30)[0, len(prompt):].tolist()
    streamer = RecordingStreamer()
    seen = streamer.seen
    fast = draftless.accelerate(model, drafter=OracleDrafter(prompt + full, VOCAB), adaptive=False)
    out = fast.generate(torch.tensor([prompt]), max_new_tokens=30, streamer=streamer)
    assert seen[0] == prompt and seen[-1] == "end"
    assert sum(seen[1:-1], []) == full
    s = out.stats
    assert s.new_tokens == 30 and s.steps == len(seen) - 2
    assert s.mean_accepted == pytest.approx(30 / s.steps) and s.mean_accepted > 1.0
    assert s.per_source["oracle"].accepted == 30 - s.steps
    assert s.draft_ms >= 0 and s.verify_ms > 0


def test_bad_inputs_fail_clearly(tiny_models):
    model = tiny_models("llama")
    fast = draftless.accelerate(model, drafter="ngram")
    with pytest.raises(ValueError, match="at least one token"):
        fast.generate(torch.zeros((1, 0), dtype=torch.long))
    with pytest.raises(ValueError, match="not left padding"):  # batches are supported, right padding is not
        fast.generate(torch.zeros((2, 3), dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="temperature"):
        fast.generate(torch.tensor([[1, 2]]), do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="unknown drafter kind"):
        draftless.accelerate(model, drafter="telepathy")
    out = fast.generate(torch.tensor([[1, 2]]), max_new_tokens=0)
    assert out.new_tokens == [] and out.sequences.tolist() == [[1, 2]]


def test_one_request_at_a_time_and_learning_resets(tiny_models):
    model = tiny_models("llama")
    prompt = prompts(5)[0]
    fast = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE)
    errors = []

    class Reentrant:
        """A streamer that tries to start a second request on the same engine mid-generation."""

        def put(self, value):
            if not errors:
                try:
                    fast.generate(torch.tensor([prompt]), max_new_tokens=2)
                except RuntimeError as e:
                    errors.append(str(e))

        def end(self):
            pass

    out = fast.generate(torch.tensor([prompt]), max_new_tokens=12, streamer=Reentrant())
    assert errors and "already generating" in errors[0]
    assert out.sequences[0].tolist() == reference(model, prompt, 12)[0].tolist()
    # the refused call left the engine usable, and what it learned can be forgotten
    assert fast.generate(torch.tensor([prompt]), max_new_tokens=4).new_tokens
    learned = fast.calibrator
    fast.reset_learning()
    assert fast.calibrator is not learned and fast.draft_ms_estimate == 0.0
