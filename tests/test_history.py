"""The history store (draftless.history) and its drafter: isolation, eviction, bounds, persistence, exactness."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from test_sampling import PROMPT, chi_square_pvalue, exact_two_token_distribution, sample_pairs

import draftless
from draftless.drafters.history import HistoryDrafter
from draftless.engine.accept import SamplingWarper
from draftless.engine.protocol import RequestInfo
from draftless.history import HistoryError, HistoryStore

IDENTITY = {"name": "tiny", "vocab_hash": "a" * 64, "vocab_size": 48}
OTHER_IDENTITY = {"name": "tiny", "vocab_hash": "b" * 64, "vocab_size": 48}


def synthetic_requests(n, seed, vocab=500, motifs=8):
    """``n`` contexts that reuse a few motifs (so histories have something to draft) with random filler."""
    rng = np.random.default_rng(seed)
    pool = [rng.integers(0, vocab, int(rng.integers(5, 30))) for _ in range(motifs)]
    out = []
    for _ in range(n):
        parts = [pool[int(rng.integers(0, motifs))] if rng.random() < 0.6 else rng.integers(0, vocab, 6)
                 for _ in range(int(rng.integers(1, 6)))]
        out.append(np.concatenate(parts).astype(np.int64))
    return out


def draft_of(store, namespace, query, budget=24):
    d = HistoryDrafter(store, record=False, warmup_requests=0)
    d.begin_request(query, RequestInfo(namespace))
    t = d.draft(query, budget)
    return t.tokens.tolist(), t.parents.tolist(), np.round(t.scores, 6).tolist()


# ---------------------------------------------------------------------------------------------- isolation
def test_drafts_never_come_from_another_namespace():
    store = HistoryStore()
    secret = np.arange(100, 160)
    store.record("alice", secret)
    query = secret[:12]
    tokens, _, _ = draft_of(store, "alice", query)
    assert tokens[1:5] == secret[12:16].tolist()  # the test can fail: alice's own history does draft
    for other in ("bob", None):
        assert draft_of(store, other, query)[0] == [int(query[-1])]  # root only: nothing from alice


def test_engine_isolates_namespaces(tiny_models):
    model = tiny_models("llama")
    fast = draftless.accelerate(model, drafter="history", cost_curve=draftless.engine.cost_curve.CostCurve(
        (1, 8, 64), (1.0, 1.1, 1.5)))
    prompt = torch.tensor([[3, 7, 11, 3, 7, 11, 5]])
    first = fast.generate(prompt, max_new_tokens=40, namespace="a")
    for _ in range(fast.drafter.warmup_requests - 1):  # the history drafts once its namespace is warm
        fast.generate(prompt, max_new_tokens=40, namespace="a")
    again = fast.generate(prompt, max_new_tokens=40, namespace="a")
    other = fast.generate(prompt, max_new_tokens=40, namespace="b")
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.sequences, other.sequences)
    assert again.stats.per_source["history"].proposed > 0  # a's second request drafts from a's first
    assert "history" not in other.stats.per_source or other.stats.per_source["history"].proposed == 0
    assert fast.drafter.store.namespaces() == ["a", "b"]


def test_first_requests_draft_exactly_as_without_a_history(tiny_models):
    """The warm-up: while a namespace holds fewer than ``warmup_requests`` past requests, the fused drafter with a
    history builds exactly the trees it builds without one (so the first requests of a deployment cannot be slower
    for the history, whatever the machine's timings make of tree sizes); from then on the history drafts."""
    from draftless.drafters.fusion import FusedDrafter
    from draftless.drafters.ngram import NGramDrafter
    from draftless.drafters.sam import SamDrafter
    from draftless.engine.protocol import StepFeedback, begin_request, end_request

    store = HistoryStore()
    warmup = HistoryDrafter(store).warmup_requests
    assert warmup >= 1
    rng = np.random.default_rng(5)
    motif = rng.integers(0, 300, 40)
    requests = [np.concatenate([rng.integers(0, 300, 10), motif, rng.integers(0, 300, 10)]) for _ in range(warmup + 1)]
    history_drafted = []
    for n, context in enumerate(requests):
        plain = FusedDrafter([NGramDrafter(), SamDrafter()])
        fused = FusedDrafter([NGramDrafter(), SamDrafter(), HistoryDrafter(store)])
        info = RequestInfo("ns")
        for d in (plain, fused):
            begin_request(d, context[:12], info)
        drafted = 0
        for cut in range(12, len(context) - 1, 3):  # three tokens committed per step
            trees = [d.draft(context[:cut], 24) for d in (plain, fused)]
            if n < warmup:
                assert trees[0].tokens.tolist() == trees[1].tokens.tolist()
                assert trees[0].parents.tolist() == trees[1].parents.tolist()
                assert np.array_equal(trees[0].scores, trees[1].scores)
            drafted += int(sum("history" in t.source_names for t in trees[1:]))
            for d, tree in zip((plain, fused), trees):
                d.feedback(StepFeedback(tree=tree, accepted=np.zeros(1, np.int64), new_tokens=context[cut: cut + 3],
                                        context=context[: cut + 3], logits=None))
        for d in (plain, fused):
            end_request(d, context, info)
        history_drafted.append(drafted)
    assert store.n_requests == warmup + 1
    assert history_drafted[:warmup] == [0] * warmup
    assert history_drafted[warmup] > 0  # the test can fail: a warm history drafts (the motif recurs)


def test_the_engine_keeps_the_history_silent_during_the_warm_up(tiny_models):
    model = tiny_models("llama")
    fast = draftless.accelerate(model, drafter="ngram+sam+history", cost_curve=draftless.engine.cost_curve.CostCurve(
        (1, 8, 64), (1.0, 1.1, 1.5)))
    prompt = torch.tensor([[3, 7, 11, 3, 7, 11, 5]])
    warmup = fast.drafter.drafters[-1].warmup_requests
    for i in range(warmup + 1):
        out = fast.generate(prompt, max_new_tokens=30, namespace="w")
        proposed = out.stats.per_source["history"].proposed if "history" in out.stats.per_source else 0
        assert (proposed > 0) == (i >= warmup), (i, proposed)


# ---------------------------------------------------------------------------------------------- eviction, bounds
def test_eviction_keeps_recent_segments_like_a_rebuilt_store():
    config = dict(max_tokens=3000, segment_requests=7)
    store = HistoryStore(**config)
    requests = synthetic_requests(120, seed=1)
    for r in requests:
        store.record("ns", r)
    assert store.n_evicted_segments > 0 and store.n_tokens <= 3000
    kept = store.requests("ns")
    assert 0 < len(kept) < len(requests)
    for got, want in zip(kept, requests[len(requests) - len(kept):]):  # the most recent requests, in order
        assert np.array_equal(got, want)
    oracle = HistoryStore(**config)
    for r in kept:
        oracle.record("ns", r)
    assert [s.n_requests for s in oracle.segments("ns")] == [s.n_requests for s in store.segments("ns")]
    rng = np.random.default_rng(2)
    drafted = 0
    for r in requests[-40:] + synthetic_requests(20, seed=1):
        cut = int(rng.integers(3, len(r) + 1))
        want = draft_of(oracle, "ns", r[:cut])
        assert draft_of(store, "ns", r[:cut]) == want
        drafted += len(want[0]) > 1
    assert drafted > 10  # the comparison covers real trees, not only empty ones
    # an evicted request's unique text is gone: it cannot be drafted any more
    dropped = requests[0]
    assert not any(np.array_equal(dropped, k) for k in kept)


def test_memory_stays_under_the_bound_over_10000_requests():
    bound = 1 << 20
    store = HistoryStore(max_bytes=bound, segment_requests=200)
    rng = np.random.default_rng(3)
    peak = 0
    for i in range(10_000):
        n = int(rng.integers(20, 120))
        context = rng.integers(0, 2000, n) if i % 3 else np.tile(rng.integers(0, 2000, 8), n // 8 + 1)
        store.record(f"user{i % 5}", context)
        peak = max(peak, store.nbytes())
        assert store.nbytes() <= bound
    assert store.n_evicted_segments > 10 and peak > bound // 2  # the bound was reached and held
    assert store.nbytes() == sum(s.sam.nbytes() for ns in store.namespaces() for s in store.segments(ns))


def test_a_request_larger_than_the_bound_is_not_kept():
    store = HistoryStore(max_bytes=4096)
    store.record(None, np.arange(5000) % 300)
    assert store.nbytes() <= 4096 and store.n_requests == 0


# ---------------------------------------------------------------------------------------------- persistence
def test_persistence_round_trip(tmp_path):
    path = tmp_path / "hist"
    store = HistoryStore.open(path, IDENTITY, segment_requests=4)
    reqs = synthetic_requests(30, seed=4)
    for i, r in enumerate(reqs):
        store.record(["x", "y", None][i % 3], r)
    again = HistoryStore.open(path, IDENTITY, segment_requests=4)
    assert sorted(again.namespaces(), key=str) == sorted(store.namespaces(), key=str)
    assert again.nbytes() == store.nbytes()
    for ns in store.namespaces():
        assert [r.tolist() for r in again.requests(ns)] == [r.tolist() for r in store.requests(ns)]
        assert [s.seq for s in again.segments(ns)] == [s.seq for s in store.segments(ns)]
        for r in reqs[:10]:
            assert draft_of(again, ns, r[:5]) == draft_of(store, ns, r[:5])
    again.record("x", reqs[0])  # a reloaded store keeps growing and saving
    assert HistoryStore.open(path, IDENTITY).n_requests == store.n_requests + 1
    assert sorted(p.name for p in path.iterdir()) == ["CURRENT", "gen-00000030"]  # old generations removed


def test_save_every_and_flush(tmp_path):
    store = HistoryStore.open(tmp_path / "h", IDENTITY, save_every=5)
    for r in synthetic_requests(7, seed=5):
        store.record(None, r)
    assert HistoryStore.open(tmp_path / "h", IDENTITY).n_requests == 5
    store.flush()
    assert HistoryStore.open(tmp_path / "h", IDENTITY).n_requests == 7


def test_leftovers_of_a_crashed_save_are_ignored(tmp_path):
    path = tmp_path / "h"
    store = HistoryStore.open(path, IDENTITY)
    for r in synthetic_requests(3, seed=6):
        store.record(None, r)
    # a save killed after writing the next generation (half of it) but before the pointer moved
    (path / "gen-00000099").mkdir()
    (path / "gen-00000099" / "tokens.npy").write_bytes(b"half")
    (path / ".gen-00000100.tmp-xyz").mkdir()
    loaded = HistoryStore.open(path, IDENTITY)
    assert [r.tolist() for r in loaded.requests(None)] == [r.tolist() for r in store.requests(None)]
    loaded.record(None, np.arange(10))
    assert sorted(p.name for p in path.iterdir()) == ["CURRENT", "gen-00000003"]


KILLED_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from draftless.history import HistoryStore
    store = HistoryStore.open(sys.argv[1], {"name": "tiny", "vocab_hash": "a" * 64, "vocab_size": 48})
    rng = np.random.default_rng(0)
    for i in range(100000):
        store.record(None, rng.integers(0, 40000, 5000))  # every record saves: big saves, easy to interrupt
        print(store.n_requests, flush=True)
""")


def test_kill_9_during_saves_leaves_the_last_complete_store(tmp_path):
    path = tmp_path / "h"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        seen = 0
        while seen < 8:  # a few complete saves first, then kill in the middle of a later one
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            seen = int(line)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read().split()
        seen = int(rest[-1]) if rest else seen
    finally:
        if proc.poll() is None:
            proc.kill()
    loaded = HistoryStore.open(path, IDENTITY)
    assert seen <= loaded.n_requests <= seen + 1  # the last save that completed (or the one that just did)
    rng = np.random.default_rng(0)
    for got in loaded.requests(None):
        assert np.array_equal(got, rng.integers(0, 40000, 5000))


def test_foreign_tokenizer_history_is_refused(tmp_path):
    store = HistoryStore.open(tmp_path / "h", IDENTITY)
    store.record(None, np.arange(10))
    with pytest.raises(HistoryError, match="tokenizer"):
        HistoryStore.open(tmp_path / "h", OTHER_IDENTITY)


def test_corrupt_history_is_refused(tmp_path):
    path = tmp_path / "h"
    store = HistoryStore.open(path, IDENTITY)
    store.record(None, np.arange(50))
    tokens = path / "gen-00000000" / "tokens.npy"
    data = bytearray(tokens.read_bytes())
    data[-1] ^= 0xFF
    tokens.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match="corrupt"):
        HistoryStore.open(path, IDENTITY)
    (path / "CURRENT").write_text("../../etc")
    with pytest.raises(HistoryError, match="corrupt"):
        HistoryStore.open(path, IDENTITY)
    other = tmp_path / "not-a-history"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(HistoryError, match="not a draftless history"):
        HistoryStore.open(other, IDENTITY)


def test_history_directory_needs_a_tokenizer(tiny_models, tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        draftless.accelerate(tiny_models("llama"), drafter="auto", history=str(tmp_path / "h"))


# ---------------------------------------------------------------------------------------------- integration
def test_auto_includes_history_only_when_configured(tiny_models):
    model = tiny_models("llama")
    assert "history" not in draftless.accelerate(model, drafter="auto", history=None).drafter.name
    assert "history" in draftless.accelerate(model, drafter="auto", history=True).drafter.name
    assert draftless.accelerate(model, drafter="sam", history=True).drafter.name == "sam+history"
    with pytest.raises(ValueError, match="history"):
        draftless.accelerate(model, drafter="select:self", history=True)


def test_the_default_history_is_autos_and_only_for_namespaced_requests(tiny_models):
    """``accelerate(history="auto")``, the default: explicit specs draft exactly what they name; ``auto`` (where it
    is a fusion) gets an in-memory history that requests without a namespace neither read nor extend."""
    from draftless.drafters.spec import auto_spec, parse_spec

    model = tiny_models("llama")
    for spec, want in (("sam", "sam"), ("ngram+sam", "ngram+sam")):
        assert draftless.accelerate(model, drafter=spec).drafter.name == want
    draftless.accelerate(model, drafter="select:self")  # a spec that cannot take a history is not refused
    fast = draftless.accelerate(model, drafter="auto", cost_curve=draftless.engine.cost_curve.CostCurve(
        (1, 8, 64), (1.0, 1.1, 1.5)))
    fused = len(parse_spec(auto_spec(model))) > 1
    assert ("history" in fast.drafter.name) == fused
    if not fused:
        return
    source = next(d for d in fast.drafter.drafters if d.name == "history")
    assert source.namespaced_only
    prompt = torch.tensor([[3, 7, 11, 3, 7, 11, 5]])
    for _ in range(source.warmup_requests + 1):
        out = fast.generate(prompt, max_new_tokens=24)
        assert "history" not in out.stats.per_source or out.stats.per_source["history"].proposed == 0
    assert source.store.n_requests == 0  # nothing recorded without a namespace
    for _ in range(source.warmup_requests + 1):
        out = fast.generate(prompt, max_new_tokens=24, namespace="task")
    assert source.store.n_requests == source.warmup_requests + 1
    assert out.stats.per_source["history"].proposed > 0


def test_custom_generate_keeps_the_history_of_its_engine(tiny_models):
    model = tiny_models("qwen2")
    ids = torch.tensor([[4, 8, 15, 16, 23, 42, 4, 8, 15]])
    with torch.no_grad():
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    for _ in range(2):
        got = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                             custom_generate=draftless.custom_generate, drafter="sam",
                             drafter_options={"history": True}, namespace="t")
        assert torch.equal(got, want)
    engine = draftless.custom_generate.engine_for(model, "sam", {"history": True})
    assert engine.drafter.name == "sam+history"
    assert [len(r) for r in engine.drafter.drafters[1].store.requests("t")] == [29, 29]
    draftless.custom_generate.release(model)


def test_sampling_with_history_follows_the_exact_target_distribution(tiny_models):
    model = tiny_models("llama")
    kw = dict(temperature=1.0)
    exact = exact_two_token_distribution(model, SamplingWarper(**kw))
    fast = draftless.accelerate(model, drafter="history", adaptive=False, calibrate=False)
    counts = sample_pairs(fast, 600, seed=7, **kw)
    assert fast.drafter.store.n_requests == 600
    assert chi_square_pvalue(counts.sum(1), exact.sum(1)) > 1e-3
    assert chi_square_pvalue(counts, exact) > 1e-3
    out = fast.generate(torch.tensor([PROMPT]), max_new_tokens=3, do_sample=True, **kw)
    assert out.stats.per_source["history"].proposed > 0  # the samples above drafted from earlier samples


# ---------------------------------------------------------------------------------------------- command line
from test_cli import WORDS, private_cache  # noqa: E402,F401 (an autouse fixture: temp cache and state dirs)


def test_generate_keeps_a_history_across_runs(tiny_folder, tmp_path, capsys):
    from draftless.app.cli import main
    from draftless.hf.loading import load_tokenizer
    from draftless.tokenizer_identity import tokenizer_identity

    history = tmp_path / "hist"
    prompt = " ".join(WORDS[3:9] * 2)
    args = ["generate", "--model", str(tiny_folder), "--prompt", prompt, "--raw", "--drafter", "ngram",
            "--max-new-tokens", "24", "--history", str(history), "--namespace", "me"]
    assert main(args) == 0 and main(args) == 0
    out = capsys.readouterr().out
    assert "drafter=ngram+history" in out
    store = HistoryStore.open(history, tokenizer_identity(load_tokenizer(str(tiny_folder))))
    assert store.namespaces() == ["me"] and store.n_requests == 2


def test_stream_bench_reports_the_warm_up_curve(tiny_folder, tmp_path):
    import json

    from draftless.app.cli import main

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": " ".join(WORDS[i: i + 6]), "answer": " ".join(WORDS[i + 1: i + 8])} for i in range(10)]
    (data / "gsm8k_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "s.json"
    code = main(["bench", "--stream", "--model", str(tiny_folder), "--data", str(data), "--requests", "6",
                 "--max-new-tokens", "12", "--json", str(out), "--markdown", str(tmp_path / "s.md")])
    report = json.loads(out.read_text())
    assert code == 0 and report["identical_to_hf"] is True and report["n_requests"] == 6
    assert report["drafters"]["auto+history"].endswith("history")
    assert report["history_store"]["requests"] == 7  # the stream's 6 and the warm-up (in a namespace of its own)
    assert [r["index"] for r in report["requests"]] == list(range(6))
    assert {"first_half", "second_half", "buckets"} <= set(report)
    assert "second half" in (tmp_path / "s.md").read_text()


def test_a_segment_growing_during_a_request_is_matched_again():
    """Two requests of one namespace in flight (rows of a batch): one ends and grows the segment the other reads."""
    store = HistoryStore()
    store.record("n", np.arange(200, 260))
    reader, writer = HistoryDrafter(store, warmup_requests=0), HistoryDrafter(store, warmup_requests=0)
    query = np.arange(200, 210)
    reader.begin_request(query, RequestInfo("n"))
    writer.begin_request(np.arange(5), RequestInfo("n"))
    writer.end_request(np.concatenate([np.arange(300, 340), np.arange(200, 230)]), RequestInfo("n"))
    grown = np.concatenate([query, np.arange(210, 215)])
    fresh = HistoryDrafter(store, record=False, warmup_requests=0)
    fresh.begin_request(grown, RequestInfo("n"))
    want = fresh.draft(grown, 16)
    got = reader.draft(grown, 16)
    assert got.tokens.tolist() == want.tokens.tolist() and len(got) > 1


def test_mbpp_tests_stream_sends_each_solution_under_one_instruction(tmp_path):
    import json

    from draftless.app.streams import MBPP_TESTS_INSTRUCTION, load_stream

    rows = [{"task_id": 601 + i, "text": f"task {i}", "code": f"def f{i}(a):\r\n\treturn a + {i}"} for i in range(4)]
    (tmp_path / "mbpp_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reqs = load_stream("mbpp-tests", tmp_path, 3, offset=1)
    assert [r.request_id for r in reqs] == ["mbpp-tests/602", "mbpp-tests/603", "mbpp-tests/604"]
    assert all(r.text.startswith(MBPP_TESTS_INSTRUCTION + "\n\n```python\n") for r in reqs)
    assert "def f1(a):\n    return a + 1\n```" in reqs[0].text and "\r" not in reqs[0].text and "\t" not in reqs[0].text
    with pytest.raises(ValueError, match="only 4 requests"):
        load_stream("mbpp-tests", tmp_path, 5)


def test_gsm8k_json_stream_sends_each_problem_under_one_extraction_instruction(tmp_path):
    import json

    from draftless.app.streams import GSM8K_JSON_EXAMPLE, GSM8K_JSON_INSTRUCTION, load_stream

    rows = [{"question": f"Ann has {i} apples.", "answer": f"#### {i}"} for i in range(5)]
    (tmp_path / "gsm8k_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reqs = load_stream("gsm8k-json", tmp_path, 2, offset=2)
    assert [r.request_id for r in reqs] == ["gsm8k-json/3", "gsm8k-json/4"]  # row 0 is the worked example
    head = f"{GSM8K_JSON_INSTRUCTION}\n\nProblem: Ann has 0 apples.\nJSON:\n{GSM8K_JSON_EXAMPLE}\n\n"
    assert reqs[0].text == f"{head}Problem: Ann has 3 apples.\nJSON:\n"
    assert json.loads(GSM8K_JSON_EXAMPLE)[0]["value"] == 48  # the example is valid JSON in the named schema
    assert "####" not in reqs[1].text  # the GSM8K answers are never shown
    with pytest.raises(ValueError, match="only 4 requests"):
        load_stream("gsm8k-json", tmp_path, 5)
