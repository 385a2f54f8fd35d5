"""The vLLM proposer's engine-free part (``draftless.integrations.chains``) and its glue, without vLLM installed.

A tiny simulated engine plays vLLM's role: every row holds a request whose "target" continuation is known, a step
accepts the longest prefix of the draft that matches it plus one bonus token, and the next ``propose`` call sees the
grown context, as vLLM's ``token_ids_cpu`` / ``num_tokens_no_spec`` show it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from draftless.drafters.sam import SamDrafter
from draftless.engine.tree import DraftTree
from draftless.integrations.chains import ChainDrafter, best_chain
from draftless.integrations.step_costs import StepCosts
from draftless.integrations.vllm import DraftlessProposer, options_from_env

# A step whose cost does not depend on its draft tokens: every candidate token that may be accepted is worth it.
FREE = StepCosts({0: {1: 1.0, 16: 1.0}, 8: {1: 1.0, 16: 1.0}})
# A first draft token that costs fifty plain steps: no chain can pay for it.
DEAR = StepCosts({0: {1: 1.0}, 1: {1: 50.0}})


def oracle_chain(context: np.ndarray, k: int, budget: int = 32, min_gain: float = 0.0) -> list[int]:
    """What a fresh SamDrafter drafts for ``context``, cut to a chain the same way (raw scores)."""
    drafter = SamDrafter()
    drafter.begin(context)
    return best_chain(drafter.draft(context, budget), k, min_gain)[0]


def step(context: np.ndarray, draft: list[int], target: np.ndarray) -> np.ndarray:
    """One simulated verification: accept the draft's prefix that agrees with ``target`` (the full text the model
    would produce), then commit one more target token. Returns the grown context."""
    n = len(context)
    hits = 0
    while hits < len(draft) and n + hits < len(target) and draft[hits] == target[n + hits]:
        hits += 1
    return target[: min(len(target), n + hits + 1)]


def repeated_text(seed: int, period: int = 23, copies: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    unit = rng.integers(100, 400, size=period)
    return np.concatenate([unit] * copies).astype(np.int64)


# ------------------------------------------------------------------------------------------ best_chain
def test_best_chain_follows_the_best_child_and_stops_at_min_gain():
    tree = DraftTree.from_paths(7, [[1, 2, 3], [4, 5]], [[0.9, 0.5, 0.05], [0.6, 0.55]], "x")
    assert best_chain(tree, 8, 0.0)[0] == [1, 2, 3]
    assert best_chain(tree, 8, 0.1)[0] == [1, 2]          # 0.05 is not worth a token
    assert best_chain(tree, 1, 0.0) == ([1], [pytest.approx(0.9)])
    assert best_chain(tree, 8, 0.95)[0] == []
    assert best_chain(DraftTree.root_only(7), 8, 0.0)[0] == []
    with pytest.raises(ValueError):
        best_chain(tree, -1, 0.0)


# ------------------------------------------------------------------------------------------ identity to sam
def test_chains_equal_a_fresh_sam_drafter_on_every_step_and_row():
    k = 6
    drafter = ChainDrafter(k, sources=("sam",), calibrate=False, min_gain=0.0, costs=FREE)
    targets = [repeated_text(s) for s in range(3)]
    contexts = [t[:30] for t in targets]
    for _ in range(25):
        drafts = drafter.propose(contexts)
        for row, (ctx, draft) in enumerate(zip(contexts, drafts)):
            assert draft == oracle_chain(ctx, k), f"row {row} at length {len(ctx)}"
        contexts = [step(c, d, t) for c, d, t in zip(contexts, drafts, targets)]
    assert drafter.stats["new_requests"] == 3 and drafter.stats["moved"] == 0


def test_calibrated_drafting_keeps_the_sources_raw_trees_and_learns_acceptance():
    k = 8
    drafter = ChainDrafter(k)  # sam + ngram, calibrated
    target = repeated_text(5, period=17, copies=8)
    ctx = target[:40]
    lengths = []
    while len(ctx) + k < len(target):
        draft = drafter.propose([ctx])[0]
        state = drafter.state_of(0)
        sam_tree = state.draft_trees(drafter.tree_budget)[0]
        fresh = SamDrafter()
        fresh.begin(ctx)
        ref = fresh.draft(ctx, drafter.tree_budget)
        assert np.array_equal(sam_tree.tokens, ref.tokens) and np.array_equal(sam_tree.parents, ref.parents)
        assert draft == target[len(ctx): len(ctx) + len(draft)].tolist()   # periodic text: every draft is right
        lengths.append(len(draft))
        ctx = step(ctx, draft, target)
    # The cautious prior starts short; acceptance it observes lengthens the chains up to k.
    assert lengths[0] < k and max(lengths) == k
    # Every draft but the last (not verified yet) was accepted in full.
    assert drafter.stats["accepted"] == drafter.stats["proposed"] - lengths[-1] > 0


# ------------------------------------------------------------------------------------------ rows
def test_a_new_request_in_a_reused_row_gets_a_fresh_state():
    k = 4
    drafter = ChainDrafter(k, sources=("sam",), calibrate=False, min_gain=0.0, costs=FREE)
    a, b = repeated_text(1), repeated_text(2)
    ctx = a[:40]
    for _ in range(5):
        ctx = step(ctx, drafter.propose([ctx])[0], a)
    old = drafter.state_of(0)
    draft = drafter.propose([b[:35]])[0]                   # request b now holds row 0
    state = drafter.state_of(0)
    assert state is not old and np.array_equal(state.tokens, b[:35])
    assert draft == oracle_chain(b[:35], k)
    assert drafter.stats["new_requests"] == 2


def test_a_longer_prompt_that_extends_an_old_context_is_not_taken_for_it():
    k = 4
    drafter = ChainDrafter(k, sources=("sam",), calibrate=False)
    a = repeated_text(3)
    drafter.propose([a[:30]])
    old = drafter.state_of(0)
    drafter.propose([a[:30 + k + 2]])                      # more than one step's growth: a new request
    assert drafter.state_of(0) is not old and drafter.stats["new_requests"] == 2
    drafter.propose([a[:30 + k + 2 + k + 1]])             # exactly one step's most: the same request
    assert drafter.stats["new_requests"] == 2


def test_a_request_moved_to_another_row_keeps_its_state():
    drafter = ChainDrafter(4, sources=("sam",), calibrate=False)
    a, b = repeated_text(1), repeated_text(2)
    drafter.propose([a[:30], b[:30]])
    b_state = drafter.state_of(1)
    drafter.propose([b[:31]])                              # a finished; vLLM compacted b into row 0
    assert drafter.state_of(0) is b_state and drafter.stats["moved"] == 1
    assert drafter.state_of(1) is None


def test_rows_without_a_draft_keep_their_state_and_get_nothing():
    drafter = ChainDrafter(4, sources=("sam",), calibrate=False, min_gain=0.0, costs=FREE)
    a, b = repeated_text(1), repeated_text(2)
    drafter.propose([a[:40], b[:40]])
    a_state = drafter.state_of(0)
    out = drafter.propose([None, b[:41]])
    assert out[0] == [] and drafter.state_of(0) is a_state
    out = drafter.propose([a[:41], b[:42]], limits=[0, 2])
    assert out[0] == [] and len(out[1]) <= 2 and drafter.state_of(0) is a_state


def test_how_much_a_step_drafts_follows_the_step_costs():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 40, 30)
    ctx = np.concatenate([base, base[:5]])  # the context repeats: sam has a long match to draft from
    eager = ChainDrafter(4, sources=("sam",), costs=FREE)
    assert eager.propose([ctx])[0], "the sam source should draft on a repeated context"
    strict = ChainDrafter(4, sources=("sam",), costs=DEAR)
    assert strict.propose([ctx]) == [[]]
    assert strict.stats["gated_steps"] == 1 and strict.stats["proposed"] == 0
    state = strict.state_of(0)
    assert state.last_chain == [] and state.pending, "the drafted trees are kept to learn from"
    # the next step continues the same request (its state is kept, not rebuilt) and learns from the bonus token
    counts_before = dict(strict.calibrators[0]._accepted), dict(strict.calibrators[0]._raw)
    assert strict.propose([np.concatenate([ctx, base[5:6]])]) == [[]] and strict.state_of(0) is state
    assert (dict(strict.calibrators[0]._accepted), dict(strict.calibrators[0]._raw)) != counts_before


def test_a_batch_keeps_its_likeliest_draft_tokens_when_each_costs_a_share_of_a_step():
    # Each draft token costs a tenth of a plain step: only tokens whose gain beats the step's current rate pay.
    linear = StepCosts({0: {1: 1.0}, 10: {1: 2.0}})
    rng = np.random.default_rng(5)
    base = rng.integers(0, 40, 30)
    ctx = np.concatenate([base, base[:5]])
    drafter = ChainDrafter(4, sources=("sam",), costs=linear, calibrate=False, min_gain=0.0)
    free = ChainDrafter(4, sources=("sam",), costs=FREE, calibrate=False, min_gain=0.0)
    chain = free.propose([ctx])[0]
    cut = drafter.propose([ctx])[0]
    assert cut == chain[: len(cut)]
    assert drafter.stats["proposed"] <= free.stats["proposed"]


def test_the_history_source_drafts_from_requests_that_left_the_engine():
    rng = np.random.default_rng(11)
    answer = rng.integers(500, 900, 40)                    # what every request of this "deployment" ends with
    first = np.concatenate([rng.integers(0, 400, 12), answer])
    second_prompt = np.concatenate([rng.integers(0, 400, 9), answer[:6]])
    drafter = ChainDrafter(4, sources=("history",), costs=FREE, calibrate=False, min_gain=0.0)
    ctx = first[:13]
    while len(ctx) < len(first):                            # request 1 runs in row 0 ...
        ctx = step(ctx, drafter.propose([ctx])[0], first)
    assert drafter.history.n_requests == 0, "nothing is recorded while the request runs"
    out = drafter.propose([second_prompt])                  # ... and row 0 now holds request 2
    assert drafter.history.n_requests == 1 and drafter.stats["new_requests"] == 2
    assert out[0] and out[0] == answer[6:6 + len(out[0])].tolist()
    # the request's own sources know nothing of request 1; a fresh drafter without history drafts nothing
    plain = ChainDrafter(4, sources=("sam",), costs=FREE, calibrate=False, min_gain=0.0)
    assert plain.propose([second_prompt]) == [[]]
    with pytest.raises(ValueError):
        ChainDrafter(4, sources=("sam",), history=drafter.history)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        ChainDrafter(0)
    with pytest.raises(ValueError):
        ChainDrafter(4, sources=("sam", "nope"))
    with pytest.raises(ValueError):
        ChainDrafter(4, sources=("sam", "sam"))
    with pytest.raises(ValueError):
        ChainDrafter(4, min_gain=2.0)
    with pytest.raises(ValueError):
        ChainDrafter(4, margin=0.5)
    with pytest.raises(TypeError):
        ChainDrafter(4, costs={0: {1: 1.0}})
    drafter = ChainDrafter(4)
    with pytest.raises(ValueError):
        drafter.propose([np.zeros((2, 3), dtype=np.int64)])
    with pytest.raises(ValueError):
        drafter.propose([np.zeros(3, dtype=np.float32)])
    with pytest.raises(ValueError):
        drafter.propose([np.arange(3)], limits=[1, 2])


# ------------------------------------------------------------------------------------------ vLLM glue
def fake_config(k: int = 4, max_model_len: int = 64):
    return SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=k),
                           model_config=SimpleNamespace(max_model_len=max_model_len))


def test_proposer_reads_vllm_arrays_and_respects_the_length_limit():
    k, max_len = 4, 64
    # no cost model: this test is about reading vLLM's arrays, not about when drafting pays
    proposer = DraftlessProposer(fake_config(k, max_len), env={})
    proposer.drafter.costs = FREE
    a = repeated_text(4, period=11, copies=8)
    token_ids = np.zeros((8, max_len), dtype=np.int32)    # vLLM's int32 [max_num_reqs, max_model_len]
    num_tokens = np.zeros(8, dtype=np.int32)
    token_ids[0, :40], num_tokens[0] = a[:40], 40
    token_ids[1, :20], num_tokens[1] = a[:20], 20
    token_ids[2, :61], num_tokens[2] = a[:61], 61          # room for 2 drafts before max_model_len
    out = proposer.propose([[5], [], [7]], num_tokens, token_ids)
    assert len(out) == 3 and out[1] == []
    assert out[0] == a[40:40 + len(out[0])].tolist() and len(out[0]) >= 1
    assert len(out[2]) <= max_len - 61 - 1
    assert all(isinstance(t, int) for t in out[0])


def test_proposer_options_and_refusals(tmp_path):
    assert options_from_env({}) == {}
    assert options_from_env({"DRAFTLESS_VLLM_SOURCES": "sam", "DRAFTLESS_VLLM_MIN_GAIN": "0.3",
                             "DRAFTLESS_VLLM_MARGIN": "1.1"}) == {"sources": ("sam",), "min_gain": 0.3, "margin": 1.1}
    with pytest.raises(ValueError):
        options_from_env({"DRAFTLESS_VLLM_MIN_GAIN": "high"})
    report = tmp_path / "costs.json"
    report.write_text(json.dumps({"ms_per_step": {"0": {"1": 60.0, "4": 90.0}, "2": {"1": 80.0, "4": 100.0}}}))
    costs = options_from_env({"DRAFTLESS_VLLM_STEP_COSTS": str(report)})["costs"]
    assert costs.ms(1, 2)[0] == pytest.approx(80.0)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"prompts": []}))
    with pytest.raises(ValueError, match="not a step-cost report"):
        options_from_env({"DRAFTLESS_VLLM_STEP_COSTS": str(foreign)})
    with pytest.raises(ValueError):
        DraftlessProposer(SimpleNamespace(speculative_config=None, model_config=None), env={})
    proposer = DraftlessProposer(fake_config(), env={"DRAFTLESS_VLLM_SOURCES": "ngram"})
    assert [name for name, _ in proposer.drafter.sources] == ["ngram"]


GLUE_CHILD = """
import sys
from types import SimpleNamespace

import numpy as np

from draftless.integrations.vllm import DraftlessProposer

config = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=4),
                         model_config=SimpleNamespace(max_model_len=64))
proposer = DraftlessProposer(config, env={"DRAFTLESS_VLLM_SOURCES": "sam,ngram,history"})
tokens = np.zeros((2, 64), dtype=np.int32)
tokens[0, :24] = np.tile(np.arange(1, 7, dtype=np.int32), 4)
proposer.propose([[6], []], np.array([24, 0], dtype=np.int32), tokens)
print(" ".join(m for m in ("vllm", "transformers") if m in sys.modules) or "none")
"""


def test_the_glue_imports_neither_transformers_nor_vllm():
    """What vLLM loads (the proposer, built and proposing with every source) leaves transformers and vLLM out of
    ``sys.modules``, in a fresh interpreter: so draftless runs inside vLLM's environment, whatever transformers that
    pins (``pyproject.toml``, the ``vllm`` extra)."""
    out = subprocess.run([sys.executable, "-c", GLUE_CHILD], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "none", out.stdout
