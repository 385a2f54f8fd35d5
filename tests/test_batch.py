"""Batched verification (``engine/batch.py``): the rows of a left-padded batch verified together in one pass per
step, each row with its own drafter, over one cache of ragged rows, give ``model.generate``'s output on the same
batch.

Greedy identity on every tiny architecture with several drafters, prompts of different lengths (one of a single
token, several longer than the tiny Gemma 3's sliding window of 6), rows finishing at different steps (EOS ids,
then the batch shrinks), token limits and per-row processors; an oracle drafter makes acceptance deep and
non-contiguous, so the per-row cache compaction moves entries. Sampling: the first two tokens of both rows of a
B = 2 batch follow the exact target distribution (chi-square, as in ``test_sampling.py``, whose negative control
covers the same acceptance function).
"""
import zlib

import numpy as np
import pytest
import torch
from conftest import ARCHS, VOCAB, OracleDrafter
from test_greedy import FAST_PATH_CURVES, FLAT_CURVE
from test_sampling import PROMPT, LikelyBranchesDrafter, chi_square_pvalue

import draftless
from draftless.engine.accept import SamplingWarper

SPECS = ["ngram", "sam", "auto"]


def padded_batch(seed: int, batch: int, lengths=None):
    """``(ids, mask, rows)``: ``batch`` prompts of different lengths (repeating motifs, so drafts get accepted),
    left-padded with id 0."""
    rng = np.random.default_rng(seed)
    lengths = lengths or [int(rng.integers(1, 19)) for _ in range(batch)]
    rows = []
    for n in lengths:
        motif = rng.integers(0, VOCAB, int(rng.integers(2, 5))).tolist()
        rows.append(((motif * 8)[: max(0, n - 2)] + rng.integers(0, VOCAB, 2).tolist())[-n:])
    width = max(lengths)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, rows


def reference(model, ids, mask, max_new, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=0,
                              **kw)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", SPECS)
def test_batched_greedy_matches_model_generate(tiny_models, arch, spec):
    if "sam" in spec or spec == "auto":
        pytest.importorskip("draftless.drafters.sam")
    model = tiny_models(arch)
    seed = zlib.crc32(f"{arch}/{spec}".encode()) % 1000
    fast = draftless.accelerate(model, drafter=spec, cost_curve=FLAT_CURVE)  # one engine across the calls
    for batch in (2, 4):
        lengths = [1, 17, 9, 12] if batch == 4 else None
        ids, mask, _ = padded_batch(seed + batch, batch, lengths)
        plain = reference(model, ids, mask, 24)
        width = ids.shape[1]
        # EOS ids taken from two rows' continuations: those rows stop early, at different steps
        eos = [int(plain[0, width + 4]), int(plain[1, width + 11])]
        cases = [(24, {}), (24, dict(eos_token_id=eos, repetition_penalty=1.3)), (6, dict(no_repeat_ngram_size=2))]
        for max_new, kw in cases:
            want = reference(model, ids, mask, max_new, **kw)
            got = fast.generate(ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=0, **kw)
            assert fast.last_batched
            assert torch.equal(got.sequences, want), (arch, spec, batch, max_new, kw)
            assert len(got.row_stats) == batch
            assert got.stats.new_tokens == sum(len(r) for r in got.new_tokens)


@pytest.mark.parametrize("arch", ARCHS)
def test_deep_acceptance_compacts_ragged_rows(tiny_models, arch):
    """Oracle drafters (one per row, each knowing its row's continuation) get most tokens accepted from inside
    trees with siblings, at depths that differ across rows: the rows' cache entries move by different amounts."""
    model = tiny_models(arch)
    ids, mask, rows = padded_batch(zlib.crc32(arch.encode()) % 1000, 4, [3, 16, 8, 11])
    width = ids.shape[1]
    plain = reference(model, ids, mask, 40)
    for kw in ({}, dict(eos_token_id=[int(plain[2, width + 9])], repetition_penalty=1.2)):
        want = reference(model, ids, mask, 40, **kw)
        oracles = [OracleDrafter(want[r, width - len(rows[r]):].tolist() + [0] * 8, VOCAB, seed=r) for r in range(4)]
        handed = iter(oracles[1:])
        fast = draftless.accelerate(model, drafter=oracles[0], drafter_factory=lambda handed=handed: next(handed),
                                    cost_curve=FLAT_CURVE, max_nodes=24)
        got = fast.generate(ids, attention_mask=mask, max_new_tokens=40, pad_token_id=0, **kw)
        assert fast.last_batched
        assert torch.equal(got.sequences, want), (arch, kw)
        assert got.stats.mean_accepted > 2.0


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_batched_greedy_on_the_packed_path(tiny_models, arch):
    """A batch's shared passes on the packed-weight path (draftless.fastpath; passes over 64 rows fall back to
    aten inside it) give ``model.generate``'s output too."""
    model = tiny_models(arch)
    fast = draftless.accelerate(model, drafter="ngram", cost_curve=FAST_PATH_CURVES["packed"])
    if "packed" not in fast.verification.available:
        pytest.skip("the packed path is not available on this build")
    ids, mask, _ = padded_batch(zlib.crc32(f"packed/{arch}".encode()) % 1000, 4, [1, 17, 9, 12])
    got = fast.generate(ids, attention_mask=mask, max_new_tokens=24, pad_token_id=0)
    assert fast.last_batched and fast.verification.packed_bytes > 0
    assert torch.equal(got.sequences, reference(model, ids, mask, 24)), arch


class RecordingDrafter(draftless.BaseDrafter):
    """Proposes nothing; records the request hooks it receives, to show each row has its own instance."""

    name = "recording"

    def __init__(self):
        self.begun, self.ended = [], []

    def begin(self, prompt_ids):
        self.begun.append(prompt_ids.tolist())

    def end_request(self, context, info):
        self.ended.append((context.tolist(), info.namespace))

    def draft(self, context, budget):
        return draftless.DraftTree.root_only(int(context[-1]))


def test_each_row_gets_its_own_drafter_and_request_hooks(tiny_models):
    model = tiny_models("llama")
    ids, mask, rows = padded_batch(5, 3, [4, 9, 6])
    want = reference(model, ids, mask, 12)
    made = []

    def factory():
        made.append(RecordingDrafter())
        return made[-1]

    first = RecordingDrafter()
    fast = draftless.accelerate(model, drafter=first, drafter_factory=factory, cost_curve=FLAT_CURVE)
    for _ in range(2):  # the row drafters are built once, then reused
        got = fast.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0, namespace="tenant")
        assert torch.equal(got.sequences, want)
    assert len(made) == 2
    width = ids.shape[1]
    for r, drafter in enumerate([first] + made):
        assert drafter.begun == [rows[r]] * 2
        assert drafter.ended == [(want[r, width - len(rows[r]):].tolist(), "tenant")] * 2


def test_without_a_factory_a_batch_runs_row_by_row(tiny_models):
    model = tiny_models("qwen2")
    ids, mask, _ = padded_batch(11, 3)
    fast = draftless.accelerate(model, drafter=RecordingDrafter(), cost_curve=FLAT_CURVE)
    got = fast.generate(ids, attention_mask=mask, max_new_tokens=10, pad_token_id=0)
    assert not fast.last_batched
    assert torch.equal(got.sequences, reference(model, ids, mask, 10))


def test_custom_generate_batches_are_verified_together(tiny_models):
    model = tiny_models("gemma3")
    ids, mask, _ = padded_batch(3, 4)
    want = reference(model, ids, mask, 20, repetition_penalty=1.2)
    with torch.no_grad():
        got = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0,
                             repetition_penalty=1.2, custom_generate=draftless.custom_generate, drafter="ngram",
                             drafter_options={"cost_curve": FLAT_CURVE})
    assert torch.equal(got, want)
    engine = draftless.custom_generate.engine_for(model, "ngram", {"cost_curve": FLAT_CURVE})
    assert engine.last_batched


def exact_pairs(model, prompt, warper):
    """float64[V, V]: P(y1, y2) after ``prompt`` under the warped target."""
    with torch.no_grad():
        p1 = warper.probs(model(torch.tensor([prompt])).logits[0, -1]).double()
        p2 = warper.probs(model(torch.tensor([prompt + [y] for y in range(VOCAB)])).logits[:, -1]).double()
    return (p1[:, None] * p2).numpy()


def test_batched_sampling_follows_the_exact_distribution_per_row(tiny_models):
    """A B = 2 batch (the second row shorter, so left-padded) sampled through the batched loop: each row's first
    two tokens follow that row's own exact target distribution."""
    model = tiny_models("llama")
    kw = dict(temperature=0.9, top_k=8)
    other = [7, 3, 7]
    exact = [exact_pairs(model, PROMPT, SamplingWarper(**kw)), exact_pairs(model, other, SamplingWarper(**kw))]
    ids = torch.tensor([PROMPT, [0] * (len(PROMPT) - len(other)) + other])
    mask = torch.tensor([[1] * len(PROMPT), [0] * (len(PROMPT) - len(other)) + [1] * len(other)])
    fast = draftless.accelerate(model, drafter=LikelyBranchesDrafter(model), adaptive=False, calibrate=False,
                                drafter_factory=lambda: LikelyBranchesDrafter(model, seed=1))
    gen = torch.Generator().manual_seed(3)
    counts = np.zeros((2, VOCAB, VOCAB))
    accepted = 0.0
    for _ in range(800):
        out = fast.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=True, generator=gen, **kw)
        for r in range(2):
            counts[r, out.new_tokens[r][0], out.new_tokens[r][1]] += 1
        accepted += out.stats.mean_accepted
    assert fast.last_batched
    assert accepted / 800 > 1.2  # drafts were accepted: the walk, not only the bonus token, was tested
    for r in range(2):
        assert chi_square_pvalue(counts[r].sum(1), exact[r].sum(1)) > 1e-3, r
        assert chi_square_pvalue(counts[r], exact[r]) > 1e-3, r


def test_batch_bench_cli_reports_every_batch_size(tiny_folder, tmp_path, monkeypatch, capsys):
    """``draftless bench --batch-size``: greedy batches checked identical to model.generate's; a sampling run
    reports speed without identity."""
    import json

    from test_cli import WORDS

    from draftless.app.cli import main

    monkeypatch.setenv("DRAFTLESS_STATE_DIR", str(tmp_path / "state"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "category": "qa",
                                             "turns": [" ".join(WORDS[i:i + 2 + i % 4] * 3)]}) for i in range(4)))
    for extra, identical in (([], True), (["--temperature", "0.8", "--top-k", "10"], None)):
        out_json = tmp_path / "b.json"
        code = main(["bench", "--model", str(tiny_folder), "--prompts", str(prompts), "--methods", "hf,ngram",
                     "--max-new-tokens", "8", "--batch-size", "1,2,4", "--json", str(out_json),
                     "--markdown", str(tmp_path / "b.md")] + extra)
        assert code == 0
        report = json.loads(out_json.read_text())
        assert set(report["batches"]) == {"1", "2", "4"}
        for size, entry in report["batches"].items():
            assert entry["n_batches"] == 4 // int(size)
            assert set(entry["methods"]) == {"hf", "ngram"}
            for m in entry["methods"].values():
                assert m["new_tokens"] > 0 and m["tokens_per_s"] > 0
                assert m["identical_to_hf"] is identical
        assert "| 4 | `ngram` |" in (tmp_path / "b.md").read_text()


def test_windowed_batch_pass_equals_the_pass_over_every_slot(tiny_models):
    """Rows of different lengths, all past the tiny Gemma 3's window (6): the batch pass hands its sliding layers
    the slots from the first one some row's window reaches, and its logits are those of the pass over every slot."""
    from draftless.engine.batch import BatchState, verify_batch
    from draftless.engine.prefill import prefill_batch
    from draftless.engine.tree import DraftTree
    from draftless.hf.attention import batch_tree_mask, cut_sliding_mask, inspect_model
    from draftless.hf.kv_cache import new_cache

    model = tiny_models("gemma3")
    layout = inspect_model(model)
    rng = np.random.default_rng(11)
    lengths, width = [21, 15, 26], 26
    padded = np.zeros((3, width), dtype=np.int64)
    for i, n in enumerate(lengths):
        padded[i, width - n:] = rng.integers(0, VOCAB, n)
    trees = [DraftTree.from_paths(int(padded[i, -1]), [rng.integers(0, VOCAB, 4).tolist(),
                                                        rng.integers(0, VOCAB, 2).tolist()]) for i in range(3)]
    out = []
    with torch.no_grad():
        for windowed in (True, False):
            cache = new_cache()
            starts = prefill_batch(model, layout, padded, [width - n for n in lengths], cache, torch.float32,
                                   torch.device("cpu"))
            batch = BatchState(cache=cache, active=[0, 1, 2], starts=starts, width=width - 1)
            ends = batch.starts + np.array(lengths) - 1
            if windowed:  # every row ends at slot 25 (left padding): the window (6) reaches back to slot 20
                anc = torch.zeros(3, 7, 7, dtype=torch.bool)
                anc[:, torch.arange(7), torch.arange(7)] = True
                mask, _ = batch_tree_mask(layout, anc, torch.zeros(3, 7, dtype=torch.long),
                                          torch.from_numpy(batch.starts), torch.from_numpy(ends), batch.width,
                                          torch.float32)
                assert batch.width == 25 and cut_sliding_mask(layout, mask, batch.width)[1] == 20
            logits, _ = verify_batch(model, layout, batch, trees, ends, False, torch.float32, torch.device("cpu"),
                                     windowed=windowed)
            out.append(logits)
    for i, tree in enumerate(trees):
        torch.testing.assert_close(out[0][i, :len(tree)], out[1][i, :len(tree)], atol=2e-5, rtol=1e-5)


def test_long_batches_on_sliding_models_prefill_in_windowed_chunks(tiny_models):
    """Left-padded rows of 50, 23 and 8 tokens (one padded past whole chunks), chunks of 12 columns whose sliding
    layers see only their window: the cache holds what one pass leaves at every real slot."""
    from draftless.engine.prefill import prefill_batch, prefill_bounds
    from draftless.hf.attention import inspect_model
    from draftless.hf.kv_cache import new_cache

    model = tiny_models("gemma3")
    layout = inspect_model(model)
    lengths, width = [50, 23, 8], 50
    rng = np.random.default_rng(12)
    padded = np.zeros((3, width), dtype=np.int64)
    for i, n in enumerate(lengths):
        padded[i, width - n:] = rng.integers(1, VOCAB, n)
    n_pad = [width - n for n in lengths]
    assert prefill_bounds(layout, width - 1, chunk=4) == [12, 24, 36, 48, 49]
    caches = [new_cache(), new_cache()]
    with torch.no_grad():
        prefill_batch(model, layout, padded, n_pad, caches[0], torch.float32, torch.device("cpu"), chunk=4)
        prefill_batch(model, layout, padded, n_pad, caches[1], torch.float32, torch.device("cpu"), chunk=10_000)
    for a, b in zip(caches[0].layers, caches[1].layers):
        assert a.keys.shape == b.keys.shape == (3, 2, 49, 16)
        for row, start in enumerate(n_pad):  # padding slots hold garbage that no real token reads
            torch.testing.assert_close(a.keys[row, :, start:], b.keys[row, :, start:], atol=2e-5, rtol=1e-5)
            torch.testing.assert_close(a.values[row, :, start:], b.values[row, :, start:], atol=2e-5, rtol=1e-5)
