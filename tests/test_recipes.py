"""Datastore recipes: GSM8K cleaning, and the MBPP held-out split (the committed prompt set is what the split
writes, and no held-out task reaches the corpus)."""
import importlib.util
import json
import sys
from pathlib import Path

from draftless.paths import bench_data_dir

DATASTORES = Path(__file__).resolve().parent.parent / "datastores"
MBPP = bench_data_dir() / "mbpp_train.jsonl"


def load_recipe(name: str):
    sys.path.insert(0, str(DATASTORES))  # recipes import their siblings, as when run as scripts
    try:
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", DATASTORES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(DATASTORES))


def test_gsm8k_answers_lose_calculator_annotations_and_the_final_line():
    recipe = load_recipe("math_store")
    raw = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nShe sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
    assert recipe.clean_answer(raw) == "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips."
    assert recipe.clean_answer("No annotations here.") == "No annotations here."
    assert recipe.clean_answer("a < b and c >> d\n#### 5") == "a < b and c >> d"


def test_mbpp_split_holds_out_the_committed_prompt_set(tmp_path):
    split = load_recipe("mbpp_split")
    prompts, heldin, n_out, n_in = split.split_mbpp(MBPP, tmp_path / "prompts.jsonl", tmp_path / "heldin.jsonl")
    tasks = [json.loads(line) for line in open(MBPP)]
    assert n_out + n_in == len(tasks) and n_out > 0
    held_in_ids = {json.loads(line)["task_id"] for line in open(heldin)}
    held_out = [json.loads(line) for line in open(prompts)]
    assert not held_in_ids & {int(p["question_id"].split("-")[1]) for p in held_out}
    texts = {t["task_id"]: t["text"] for t in tasks}
    for p in held_out:
        assert p["category"] == "mbpp" and p["turns"][0].startswith(texts[int(p["question_id"].split("-")[1])])
    assert prompts.read_text() == (DATASTORES / "mbpp-heldout-prompts.jsonl").read_text()


def test_pycode_recipe_builds_a_decontaminated_sharded_store(tmp_path):
    recipe = load_recipe("pycode_store")
    roots = recipe.source_roots()
    assert roots and all(Path(r).is_dir() for r in roots)
    assert not any(Path(a) != Path(b) and Path(a).is_relative_to(b) for a in roots for b in roots)
    # a tiny source tree: one file copies a held-out MBPP prompt, one sits under tests/, one is kept
    src = tmp_path / "src"
    (src / "pkg" / "tests").mkdir(parents=True)
    held_out = json.loads((DATASTORES / "mbpp-heldout-prompts.jsonl").read_text().splitlines()[0])["turns"][0]
    (src / "pkg" / "leak.py").write_text(f'"""{held_out}"""\n')
    (src / "pkg" / "tests" / "test_x.py").write_text("def test_x():\n    assert True\n")
    (src / "pkg" / "kept.py").write_text("def add(a, b):\n    return a + b\n" * 20)
    out = tmp_path / "store"
    report = recipe.main(["--model", "smollm2-135m", "--shards", "2", "--roots", str(src), "--out", str(out),
                          "--mbpp", str(MBPP)])
    assert report.n_documents == 1  # kept.py alone: the leak dropped, tests/ skipped
    from draftless.stores.sharded import open_shards

    manifest, shards = open_shards(out, expected_kind="rest")
    assert len(shards) >= 1 and manifest["kind"] == "rest"
