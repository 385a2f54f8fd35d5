"""The dense build's model pass on Ray Data: the plan's rows are the in-process forward batches, a local Ray build
writes the in-process build's store (same keys, same drafts), and bad input fails before Ray starts."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import WORDS

from draftless.drafters.dense import DenseDrafter
from draftless.engine.protocol import StepFeedback
from draftless.engine.tree import DraftTree
from draftless.index.dense_index import DenseStore
from draftless.stores.dense_build import hidden_states, window_batches
from draftless.stores.indexes import load_index
from draftless.stores.ray_dense_build import plan_rows

OPTS = dict(dim=32, index="flat", window=64, overlap=16, batch_size=4, pca_sample=500)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A jsonl file of word-level documents (about 3k tokens of the tiny folder's tokenizer)."""
    rng = np.random.default_rng(0)
    motifs = [" ".join(rng.choice(WORDS, 12)) for _ in range(6)]
    docs = [" ".join(motifs[int(i)] for i in rng.integers(0, 6, int(rng.integers(3, 8)))) for _ in range(60)]
    path = tmp_path_factory.mktemp("dense-corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_plan_rows_are_the_forward_batches():
    tokens = np.arange(1000, dtype=np.int32)
    rows = plan_rows(tokens, window=64, overlap=16, batch_size=4)
    batches = window_batches(len(tokens), 64, 16, 4)
    assert len(rows) == len(batches)
    for row, group in zip(rows, batches):
        starts = row["starts"][row["starts"] >= 0].tolist()
        assert starts == group and row["span"][0] == group[0]
        span = row["span"][: row["span_len"]]
        assert all(np.array_equal(span[s - group[0]: s - group[0] + 64][: len(tokens) - s],
                                  tokens[s: s + 64]) for s in group)
    assert rows[0]["first"] == 0 and rows[1]["first"] == batches[1][0] + 16
    assert rows[-1]["span_len"] == len(tokens) - batches[-1][0]


def test_ray_build_equals_the_in_process_build(corpus, tiny_folder, tmp_path):
    """Same corpus, model folder and options: the store a local 2-CPU Ray writes holds the in-process store's
    tokens, PCA and keys (fp32, allclose) and drafts the same trees."""
    pytest.importorskip("ray")
    from draftless.hf.loading import load_model
    from draftless.stores.build import build_store
    from draftless.stores.ray_dense_build import build_dense_store_ray

    model, tok = load_model(str(tiny_folder))
    local = build_store("dense", [corpus], tok, tmp_path / "local", fields=["text"], model=str(tiny_folder),
                        progress=False, verbose=False, **OPTS)
    report = build_dense_store_ray([corpus], tok, tmp_path / "ray", model=tiny_folder, fields=["text"],
                                   num_cpus=2, progress=False, verbose=False, **OPTS)
    assert report.n_tokens == local.n_tokens > 2000 and report.stats["n_keys"] == local.stats["n_keys"]
    a, b = load_index(DenseStore, local.out_dir), load_index(DenseStore, report.out_dir)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.components, b.components, atol=1e-5)
    np.testing.assert_allclose(a.keys(), b.keys(), atol=1e-5)
    assert a.store_meta["model"] == b.store_meta["model"] and b.store_meta["build_args"]["ray"] is True
    tokens = np.asarray(a.tokens, dtype=np.int64)
    drafters = [DenseDrafter(path, tok, model=model, k=8) for path in (local.out_dir, report.out_dir)]
    drafted = 0
    for t in range(40, 400, 37):
        state = torch.from_numpy(hidden_states(model, tokens[None, : t + 1])[0, -1:])
        step = StepFeedback(tree=DraftTree.root_only(int(tokens[t])), accepted=np.zeros(1, np.int64),
                            new_tokens=tokens[t + 1: t + 2], context=tokens[: t + 2], logits=None, hidden=state)
        trees = []
        for d in drafters:
            d.feedback(step)
            trees.append(d.draft(tokens[: t + 2], 16))
        assert np.array_equal(trees[0].tokens, trees[1].tokens) and np.allclose(trees[0].scores, trees[1].scores)
        drafted += len(trees[0]) > 1
    assert drafted >= 5  # the comparison is of real drafts, not of empty ones


def test_bad_input_fails_before_ray_starts(corpus, tiny_folder, tmp_path):
    ray = pytest.importorskip("ray")
    from draftless.hf.loading import ModelNotAvailable, load_tokenizer
    from draftless.stores.ray_dense_build import build_dense_store_ray

    tok = load_tokenizer(str(tiny_folder))
    with pytest.raises(ModelNotAvailable, match="unknown model"):
        build_dense_store_ray([corpus], tok, tmp_path / "x", model=str(tmp_path / "no-such-model"), fields=["text"])
    with pytest.raises(TypeError, match="name or folder"):
        build_dense_store_ray([corpus], tok, tmp_path / "x", model=object())
    with pytest.raises(ValueError, match="unknown index type"):
        build_dense_store_ray([corpus], tok, tmp_path / "x", model=str(tiny_folder), index="pq")
    with pytest.raises(ValueError, match="window must be larger"):
        build_dense_store_ray([corpus], tok, tmp_path / "x", model=str(tiny_folder), window=16, overlap=16)
    assert not ray.is_initialized() and not (tmp_path / "x").exists()


def test_cli_refuses_dense_shards_and_a_missing_model(corpus, tiny_folder, tmp_path, capsys):
    from draftless.app.cli import main

    with pytest.raises(SystemExit, match="--shards builds 'rest' stores only"):
        main(["build", "--kind", "dense", "--shards", "2", "--corpus", str(corpus), "--out", str(tmp_path / "s"),
              "--model", str(tiny_folder)])
    code = main(["build", "--kind", "dense", "--ray", "--corpus", str(corpus), "--out", str(tmp_path / "s"),
                 "--model", str(tmp_path / "missing")])
    assert code == 2 and "unknown model" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_importing_draftless_does_not_import_ray():
    import subprocess

    code = "import draftless, draftless.stores.ray_dense_build, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
