"""Tiny seeded models of four architectures, built in-process from configs (no downloads)."""
from __future__ import annotations

import threading

import pytest
import torch

from draftless.hf.tiny_models import ARCHS, VOCAB, make_tiny_model  # noqa: F401 (re-exported to the tests)

# the words of ``tiny_folder``'s word-level tokenizer (ids 3 and up; 0-2 are <unk>, <s>, </s>)
WORDS = [f"w{i}" for i in range(VOCAB - 3)]


@pytest.fixture(scope="session", autouse=True)
def isolated_state_dir(tmp_path_factory):
    """Measured cost curves and learned choices go to a fresh directory per test run (``DRAFTLESS_STATE_DIR``, see
    ``draftless.paths``), so no test reads what an earlier run, or the user, measured under the home directory.
    Converted models stay in the shared cache (``DRAFTLESS_CACHE``): the slow tests need them."""
    import os

    state = tmp_path_factory.mktemp("draftless-state")
    before = os.environ.get("DRAFTLESS_STATE_DIR")
    os.environ["DRAFTLESS_STATE_DIR"] = str(state)
    yield state
    if before is None:
        os.environ.pop("DRAFTLESS_STATE_DIR", None)
    else:
        os.environ["DRAFTLESS_STATE_DIR"] = before


@pytest.fixture(scope="session")
def tiny_models():
    cache = {}

    def get(arch: str, attn: str = "sdpa"):
        if (arch, attn) not in cache:
            cache[(arch, attn)] = make_tiny_model(arch, attn)
        return cache[(arch, attn)]

    return get


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny llama saved as a local HF folder with a word-level tokenizer over ``WORDS`` (the CLI tests' model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    model = make_tiny_model("llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


class OracleDrafter:
    """Test drafter that knows the reference greedy continuation and proposes trees around it.

    Each step it offers a branch with the true next tokens (corrupted at a random depth, so rejections land
    mid-path) plus random branches; sometimes nothing. It exercises deep acceptance, sibling choice, and cache
    compaction of non-contiguous nodes.
    """

    name = "oracle"
    wants_hidden_states = False
    calibrates_scores = False

    def __init__(self, reference, vocab: int, seed: int = 0, max_branches: int = 3, max_depth: int = 6):
        import numpy as np

        self.reference = [int(t) for t in reference]
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)
        self.max_branches = max_branches
        self.max_depth = max_depth

    def begin(self, prompt_ids):
        pass

    def feedback(self, step):
        pass

    def draft(self, context, budget):
        from draftless.engine.tree import DraftTree

        rng = self.rng
        root = int(context[-1])
        if rng.random() < 0.1:
            return DraftTree.root_only(root)
        truth = self.reference[len(context): len(context) + self.max_depth]
        paths = []
        for _ in range(int(rng.integers(0, self.max_branches + 1))):
            paths.append([int(t) for t in rng.integers(0, self.vocab, int(rng.integers(1, self.max_depth + 1)))])
        if truth:
            cut = int(rng.integers(0, len(truth) + 1))
            true_path = list(truth)
            if cut < len(true_path):
                true_path[cut] = (true_path[cut] + 1 + int(rng.integers(0, self.vocab - 1))) % self.vocab
            paths.insert(int(rng.integers(0, len(paths) + 1)), true_path)
        depth_scores = [[0.9 ** (j + 1) for j in range(len(p))] for p in paths]
        return DraftTree.from_paths(root, paths, depth_scores, source=self.name)


class RecordingStreamer:
    """An HF-style streamer that records what it is given: ``seen`` holds each ``put`` as a list of ids, then
    ``"end"``."""

    def __init__(self):
        self.seen = []

    def put(self, value):
        self.seen.append(value.flatten().tolist())

    def end(self):
        self.seen.append("end")


class CharTokenizer:
    """A stand-in for a fast HF tokenizer in datastore tests: one token per character, EOS = 0, newline 97.
    ``shift`` moves every id, making a "foreign" tokenizer with the same size."""

    def __init__(self, name: str = "chars", shift: int = 0):
        self.name_or_path = f"/models/{name}"
        self.eos_token_id = 0
        self._vocab = {"</s>": 0, "<unk>": 1}
        self._vocab.update({chr(c): c - 30 + shift for c in range(32, 127)})
        self._vocab["\n"] = 97 + shift

    def get_vocab(self):
        return dict(self._vocab)

    def __call__(self, texts, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [[self._vocab.get(ch, 1) for ch in text] for text in texts]}

    def ids(self, text: str) -> list[int]:
        return self([text])["input_ids"][0]


def check_tree(tree, context, budget: int) -> None:
    """Invariants every drafted tree keeps: valid arrays, rooted at the last token, within budget, scores in
    (0, 1] and non-increasing from parent to child."""
    tree.validate()
    assert tree.root_token == int(context[-1])
    assert len(tree) <= budget
    assert ((tree.scores > 0) & (tree.scores <= 1)).all()
    assert (tree.scores[1:] <= tree.scores[tree.parents[1:]] + 1e-6).all()


def best_path(tree) -> list[int]:
    """Tokens along the highest-scored child at every level."""
    kids = tree.children()
    node, out = 0, []
    while kids[node]:
        node = max(kids[node], key=lambda k: tree.scores[k])
        out.append(int(tree.tokens[node]))
    return out


def damaged_copy(store, dst, filename: str, how: str):
    """A copy of datastore directory ``store`` at ``dst`` with ``filename`` cut short (``how="truncate"``: its
    last bytes dropped) or corrupted (``how="flip"``: one byte near the end changed, size kept)."""
    import shutil
    from pathlib import Path

    shutil.copytree(store, dst)
    path = Path(dst) / filename
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        raw = raw[:-8]
    elif how == "flip":
        raw[-3] ^= 0x55
    else:
        raise ValueError(how)
    path.write_bytes(bytes(raw))
    return Path(dst)


def assert_common_store_refusals(open_store, store, tmp_path, kind: str, damaged_file: str, foreign_tokenizer,
                                 corrupt_file: str | None = None):
    """The refusals every store-backed drafter owes: ``open_store(path, tokenizer=None, verify="size")`` must raise
    ``DatastoreError`` for a foreign tokenizer, a truncated file, a corrupt file (``verify="full"``) and a store of
    another kind."""
    import numpy as np
    import pytest

    from draftless.stores.datastore import DatastoreError, write_store

    with pytest.raises(DatastoreError, match=foreign_tokenizer.name_or_path.rsplit("/", 1)[-1]):
        open_store(store, tokenizer=foreign_tokenizer)
    truncated = damaged_copy(store, tmp_path / "truncated", damaged_file, "truncate")
    with pytest.raises(DatastoreError, match="truncated"):
        open_store(truncated)
    corrupt = damaged_copy(store, tmp_path / "corrupt", corrupt_file or damaged_file, "flip")
    with pytest.raises(DatastoreError, match="sha256"):
        open_store(corrupt, verify="full")
    other = "rest" if kind != "rest" else "sam"
    other_kind = write_store(tmp_path / other, other, {"tokens": np.zeros(3, np.int32)}, None)
    with pytest.raises(DatastoreError, match=f"expected '{kind}'"):
        open_store(other_kind)


SUBSET_IDS = [3, 7, 1, 9, 4, 4, 2, 8, 5, 1, 0, 6]


def subset_logits(model, keep) -> torch.Tensor:
    """Logits float32[1, T, vocab] of ``model`` restricted to the decoder layers ``keep`` on ``SUBSET_IDS``,
    through ``LayerSubsetModel`` with a causal tree mask and a fresh cache."""
    import numpy as np

    from draftless.hf.attention import inspect_model, tree_attention_mask
    from draftless.hf.kv_cache import new_cache
    from draftless.hf.layer_view import LayerSubsetModel

    T = len(SUBSET_IDS)
    mask = tree_attention_mask(inspect_model(model), np.tril(np.ones((T, T), bool)), np.arange(T), 0,
                               torch.float32, torch.device("cpu"))
    with torch.no_grad():
        return LayerSubsetModel(model, keep)(torch.tensor([SUBSET_IDS]), torch.arange(T)[None], mask,
                                             new_cache()).logits


def run_threads(n_threads: int, work) -> list:
    """Run ``work(i)`` in ``n_threads`` threads started together; returns their results (or raises the first
    exception a thread raised)."""
    results, errors = [None] * n_threads, []
    barrier = threading.Barrier(n_threads)

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
