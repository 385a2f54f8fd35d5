"""``draftless.app.replay`` (``scripts/replay_stream.py``): replaying a recorded greedy output through a drafter takes
exactly the passes the real engine takes (same drafter, fixed tree sizes), without running the target."""
from __future__ import annotations

import torch
from test_greedy import FLAT_CURVE

import draftless
from draftless.app import replay as replay_stream


def test_replay_takes_the_passes_the_engine_takes(tiny_models):
    model = tiny_models("llama")
    prompts = [torch.tensor([[3, 4, 5, 6, 3, 4, 5, 6, 3, 4]]), torch.tensor([[9, 8, 7, 9, 8, 7, 9, 8]])]
    real = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE, adaptive=False, max_nodes=8)
    requests, passes = [], []
    for ids in prompts:
        out = real.generate(ids, max_new_tokens=24, do_sample=False)
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24)
        assert out.new_tokens == ref[0, ids.shape[1]:].tolist()
        requests.append({"prompt": ids[0].tolist(), "output": list(out.new_tokens)})
        passes.append(out.stats.steps)
    replayer = draftless.accelerate(model, drafter="ngram", cost_curve=FLAT_CURVE, adaptive=False, max_nodes=8)
    rows = replay_stream.replay_requests(replayer, requests)
    assert [r["passes"] for r in rows] == passes
    assert sum(passes) < sum(len(r["output"]) for r in requests)  # drafts were accepted: the walk was exercised
    assert [r["tokens"] for r in rows] == [len(r["output"]) for r in requests]
    assert all(r["ms"] >= r["passes"] * FLAT_CURVE.cost(1) for r in rows)


def test_repeat_coverage_counts_verbatim_runs_by_where_they_repeat():
    earlier = {"prompt": [1, 2], "output": [10, 11, 12, 13, 14, 15]}
    # output: a 5-token run of the earlier output, 2 fresh tokens, then a 4-token run of its own prompt
    later = {"prompt": [30, 31, 32, 33], "output": [11, 12, 13, 14, 15, 40, 41, 30, 31, 32, 33]}
    first, second = replay_stream.repeat_coverage([earlier, later])
    assert first == {"tokens": 6, "from_history": 0, "from_own": 0}
    assert second == {"tokens": 11, "from_history": 5, "from_own": 4}
    # runs shorter than min_run count for nobody
    assert replay_stream.repeat_coverage([earlier, later], min_run=6)[1] == {"tokens": 11, "from_history": 0,
                                                                              "from_own": 0}
