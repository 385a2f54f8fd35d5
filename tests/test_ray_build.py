"""Sharded builds on Ray: the plan (units of whole documents, shards of whole units) without Ray, and one real
build on a local Ray whose store holds exactly the in-process build's tokens and drafts like a one-shard store."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from draftless.stores.documents import corpus_files, iter_pieces, read_file
from draftless.stores.ray_build import group_units, plan_units

CODE = ["def {0}(a, b):\n    return a {1} b\n", "for i in range({0}):\n    total {1}= i\n",
        "class {0}:\n    def __init__(self, x):\n        self.x = x {1} 1\n", "print({0}({1}))\n"]


def code_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    names = ["add", "mul", "items", "node", "value", "count"]
    return ["".join(CODE[int(rng.integers(len(CODE)))].format(names[int(rng.integers(len(names)))],
                                                               "+-*/"[int(rng.integers(4))])
                    for _ in range(int(rng.integers(1, 6)))) for _ in range(n)]


def char_tokenizer():
    """A real fast tokenizer (what a Ray build ships to its actors): one token per character, EOS ``</s>`` = 0."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"</s>": 0, "<unk>": 1, "\n": 2, **{chr(c): c - 29 for c in range(32, 127)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")
    tok.name_or_path = "chars-fast"
    return tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of .py files, a jsonl file and a parquet file of several row groups."""
    root = tmp_path_factory.mktemp("ray-corpus")
    src = root / "src"
    for i, doc in enumerate(code_docs(14, seed=1)):
        (src / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"pkg{i % 3}" / f"m{i}.py").write_text(doc)
    (src / "notes.txt").write_text("not code\n")
    (root / "tasks.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in code_docs(40, seed=2)))
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": code_docs(30, seed=3)}), root / "more.parquet", row_group_size=7)
    return root


# ------------------------------------------------------------------------------------------ the plan, no Ray
def test_units_cover_the_corpus_in_order(corpus):
    files = corpus_files([corpus / "src", corpus / "tasks.jsonl", corpus / "more.parquet"], glob="*.py")
    assert [f.suffix for f in files].count(".py") == 14 and files[-1].suffix == ".parquet"
    units = plan_units(files, unit_bytes=300)
    jsonl_parts = [u[0][1] for u in units if u[0][0].endswith(".jsonl")]
    parquet_parts = [u[0][1] for u in units if u[0][0].endswith(".parquet")]
    assert len(jsonl_parts) > 3 and len(parquet_parts) > 1
    assert jsonl_parts[0][0] == 0 and all(a[1] == b[0] for a, b in zip(jsonl_parts, jsonl_parts[1:]))
    assert sum(parquet_parts, []) == list(range(5))  # 30 rows in groups of 7
    whole = [p.text for p in iter_pieces([corpus / "src", corpus / "tasks.jsonl", corpus / "more.parquet"],
                                         glob="*.py")]
    by_units = [p.text for u in units for f, part in u
                for p in read_file(__import__("pathlib").Path(f), None, part=None if part is None else tuple(part))]
    assert by_units == whole and len(whole) == 14 + 40 + 30


def test_patterns_name_files():
    from pathlib import Path

    here = Path(__file__).parent
    assert corpus_files([str(here / "test_ray_*.py")]) == [here / "test_ray_build.py"]
    with pytest.raises(FileNotFoundError, match="matches nothing"):
        corpus_files([str(here / "nothing_*.zzz")])


def test_group_units_balances_whole_units():
    assert group_units([10, 10, 10, 10], 2) == [[0, 1], [2, 3]]
    assert group_units([50, 1, 1, 1, 1], 3) == [[0], [1], [2, 3, 4]]  # a unit is never split
    assert group_units([5, 0, 5, 0], 4) == [[0], [1, 2, 3]]  # no shard without tokens
    assert group_units([0, 0, 3], 2) == [[0, 1, 2]]
    assert group_units([3], 8) == [[0]]
    rng = np.random.default_rng(0)
    for _ in range(200):
        tokens = rng.integers(0, 5, int(rng.integers(1, 30))) * (rng.random() < 0.5)
        tokens[int(rng.integers(len(tokens)))] += 1
        shards = int(rng.integers(1, 9))
        groups = group_units(tokens.tolist(), shards)
        assert sum(groups, []) == list(range(len(tokens))) and 1 <= len(groups) <= shards
        assert all(tokens[g].sum() > 0 for g in groups)


# ------------------------------------------------------------------------------------------ a real Ray build
def test_ray_build_equals_the_in_process_build(corpus, tmp_path):
    """Three shards built on a local 2-CPU Ray, from 14 files, a jsonl file cut in byte ranges and a parquet file
    cut in row groups: the shards hold exactly the in-process tokens, and draft exactly like one store."""
    pytest.importorskip("ray")
    from draftless.drafters.rest import RestDrafter
    from draftless.stores.build import build_store
    from draftless.stores.corpus import tokenize_corpus
    from draftless.stores.ray_build import build_sharded_store_ray
    from draftless.stores.sharded import MANIFEST_FILE, UNITS_DIR, load_rest_index

    tok = char_tokenizer()
    paths = [corpus / "src", corpus / "tasks.jsonl", corpus / "more.parquet"]
    start = time.perf_counter()
    report = build_sharded_store_ray(paths, tok, tmp_path / "ray", shards=3, glob="*.py", num_cpus=2,
                                     unit_bytes=400, verbose=False)
    seconds = time.perf_counter() - start
    assert report.stats["shards"] == 3 and report.stats["units"] > 6 and seconds < 60
    out = tmp_path / "ray"
    assert (out / MANIFEST_FILE).is_file() and not (out / UNITS_DIR).exists()
    index = load_rest_index(out, tokenizer_identity=None)
    reference = tokenize_corpus(paths, tok, glob="*.py", progress=False)
    sep = reference.separator_id
    joined = np.concatenate([np.concatenate([s.tokens, [sep]]) for s in index.shards])[:-1]
    assert np.array_equal(joined, reference.tokens)
    assert report.n_documents == reference.n_documents == 14 + 40 + 30
    one = build_store("rest", paths, tok, tmp_path / "one", glob="*.py", progress=False, verbose=False).out_dir
    d1, d2 = RestDrafter(one, tok, max_occurrences=4), RestDrafter(out, tok, max_occurrences=4)
    rng = np.random.default_rng(0)
    for _ in range(100):
        end = int(rng.integers(2, len(reference.tokens)))
        ctx = np.asarray(reference.tokens[max(0, end - 12): end], dtype=np.int64)
        t1, t2 = d1.draft(ctx, 16), d2.draft(ctx, 16)
        assert np.array_equal(t1.tokens, t2.tokens) and np.array_equal(t1.scores, t2.scores)


def test_ray_build_decontaminates_as_the_in_process_build(corpus, tmp_path):
    """``exclude_overlap`` on Ray: each actor filters its units, and the store and the merged report (document
    indices in corpus order) equal the in-process build's; a document of each source (file, jsonl, parquet) leaks."""
    pytest.importorskip("ray")
    pytest.importorskip("ahocorasick")
    from draftless.stores.corpus import tokenize_corpus
    from draftless.stores.ray_build import build_sharded_store_ray
    from draftless.stores.sharded import MANIFEST_FILE, load_rest_index

    tok = char_tokenizer()
    paths = [corpus / "src", corpus / "tasks.jsonl", corpus / "more.parquet"]
    docs = [p.text for p in iter_pieces(paths, glob="*.py")]
    leaks = [docs[i] for i in (3, 20, 70) if len(docs[i].split()) >= 13]
    assert len(leaks) >= 2
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"question_id": k, "turns": [t]}) + "\n" for k, t in enumerate(leaks)))
    report = build_sharded_store_ray(paths, tok, tmp_path / "ray", shards=3, glob="*.py", num_cpus=2,
                                     unit_bytes=400, exclude_overlap=eval_file, verbose=False)
    reference = tokenize_corpus(paths, tok, glob="*.py", progress=False, exclude_overlap=eval_file)
    expected = reference.decontamination.to_json()
    assert expected["n_excluded"] >= len(leaks)
    got = json.loads((tmp_path / "ray" / MANIFEST_FILE).read_text())["decontamination"]
    assert got == expected
    index = load_rest_index(tmp_path / "ray", tokenizer_identity=None)
    sep = reference.separator_id
    joined = np.concatenate([np.concatenate([s.tokens, [sep]]) for s in index.shards])[:-1]
    assert np.array_equal(joined, reference.tokens)
    assert report.n_documents == reference.n_documents == len(docs) - expected["n_excluded"]


def test_a_missing_decontamination_file_fails_before_ray_starts(corpus, tmp_path):
    from draftless.stores.ray_build import build_sharded_store_ray

    with pytest.raises(FileNotFoundError, match="exclude-overlap file not found"):
        build_sharded_store_ray([corpus / "src"], char_tokenizer(), tmp_path / "s", shards=2, glob="*.py",
                                exclude_overlap=tmp_path / "missing.jsonl", verbose=False)
    assert not (tmp_path / "s").exists()
