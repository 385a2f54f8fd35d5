"""Dense retrieval stores (DReSD): exact / high-recall search, store round trip and refusals, DenseDrafter trees."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import VOCAB, assert_common_store_refusals, best_path, check_tree

from draftless.drafters.dense import DenseDrafter
from draftless.engine.protocol import StepFeedback
from draftless.engine.tree import DraftTree
from draftless.index.dense_index import DenseStore, OnlineDenseIndex, index_keys, set_search_params
from draftless.stores.datastore import DatastoreError, write_store
from draftless.stores.dense_build import build_dense_store, hidden_states, iter_hidden_states
from draftless.stores.indexes import load_index, save_index
from draftless.tokenizer_identity import tokenizer_identity


class IdTokenizer:
    """A stand-in tokenizer whose vocabulary is the tiny models' ids 0..VOCAB-1."""

    def __init__(self, name: str = "tiny", shift: int = 0):
        self.name_or_path = f"/models/{name}"
        self.eos_token_id = 0
        self._vocab = {f"t{i + shift}": i for i in range(VOCAB)}

    def get_vocab(self):
        return dict(self._vocab)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    from conftest import make_tiny_model

    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def sequence(model):
    """A prompt and the model's greedy continuation: the corpus the drafter should retrieve from."""
    prompt = torch.tensor([[5, 9, 17, 3, 22, 41, 8, 30]])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=120, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    return out[0].numpy().astype(np.int64)


def saved_store(model, sequence, tmp_path_factory, index: str):
    """A dense store of ``index`` kind over ``sequence`` (dim 32), written to a fresh directory."""
    built = build_dense_store(model, sequence, dim=32, index=index, window=256, overlap=16, progress=False)
    path = tmp_path_factory.mktemp(f"dense-{index}") / "store"
    save_index(built, path, tokenizer_identity(IdTokenizer()), {"test": True})
    return path


@pytest.fixture(scope="module")
def store(model, sequence, tmp_path_factory):
    return saved_store(model, sequence, tmp_path_factory, "flat")


# ------------------------------------------------------------------------------------------ search quality
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_finds_the_exact_neighbours(kind):
    import faiss

    rng = np.random.default_rng(0)
    keys = unit(rng.normal(size=(2000, 16)))
    queries = unit(keys[:50] + 0.3 * rng.normal(size=(50, 16)))
    exact = faiss.IndexFlatIP(16)
    exact.add(keys)
    _, truth = exact.search(queries, 10)
    kw = {"nlist": 16} if kind == "ivf" else {}
    index = index_keys(keys, kind, **kw)
    set_search_params(index, ef_search=256, nprobe=16)  # exhaustive IVF, generous HNSW
    _, got = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert recall == 1.0 if kind in ("flat", "ivf") else recall >= 0.98


def test_hidden_state_windows_cover_every_position_once(model):
    tokens = np.random.default_rng(1).integers(0, VOCAB, 150)
    chunks = list(iter_hidden_states(model, tokens, window=40, overlap=8, batch_size=2, progress=False))
    starts = [s for s, _ in chunks]
    lengths = [len(h) for _, h in chunks]
    assert starts[0] == 0 and sum(lengths) == len(tokens)
    assert all(a + n == b for a, n, b in zip(starts, lengths, starts[1:]))
    # the first window's states are exactly those of one forward pass over its tokens
    np.testing.assert_allclose(chunks[0][1], hidden_states(model, tokens[None, :40])[0], atol=1e-4)


def test_online_index_is_exact_and_capped():
    rng = np.random.default_rng(2)
    online = OnlineDenseIndex(8, capacity=5)
    keys = unit(rng.normal(size=(7, 8)))
    online.add(keys, np.arange(7))
    assert online.size == 5
    sims, pos = online.search(keys[6], 3)
    assert pos[0] == 6 and np.isclose(sims[0], 1.0) and set(pos) <= set(range(2, 7))
    sims, pos = online.search(keys[0], 5)  # evicted
    assert 0 not in pos.tolist()


# ------------------------------------------------------------------------------------------ store
def test_round_trip(store, sequence):
    loaded = load_index(DenseStore, store, tokenizer_identity=tokenizer_identity(IdTokenizer()), verify="full")
    assert np.array_equal(loaded.tokens, sequence.astype(np.int32))
    assert len(loaded) == len(sequence) - 1 and loaded.dim == 32 and loaded.hidden_size == 64
    q = loaded.project(np.random.default_rng(3).normal(size=(2, 64)))
    again = load_index(DenseStore, store)
    np.testing.assert_array_equal(loaded.search(q, 5)[1], again.search(q, 5)[1])
    assert loaded.store_meta["model"]["hidden_size"] == 64 and loaded.store_meta["build_args"] == {"test": True}


def test_refusals(store, tmp_path, model):
    assert_common_store_refusals(lambda path, tokenizer=None, verify="size": DenseDrafter(
        path, tokenizer, verify=verify), store, tmp_path, "dense", "index.npy", IdTokenizer("other", shift=1))
    garbage = tmp_path / "garbage"
    loaded = load_index(DenseStore, store)
    write_store(garbage, "dense", {"tokens": loaded.tokens, "positions": loaded.positions,
                                   "pca_components": loaded.components, "pca_mean": loaded.mean,
                                   "index": np.frombuffer(b"not a faiss index" * 4, dtype=np.uint8)}, None)
    with pytest.raises(DatastoreError, match="FAISS"):
        DenseDrafter(garbage)
    wrong_dim = tmp_path / "wrong_dim"
    write_store(wrong_dim, "dense", {"tokens": loaded.tokens, "positions": loaded.positions,
                                     "pca_components": loaded.components[:16], "pca_mean": loaded.mean,
                                     "index": np.load(store / "index.npy")}, None)
    with pytest.raises(DatastoreError, match="does not match"):
        DenseDrafter(wrong_dim)
    with pytest.raises(DatastoreError, match="hidden states of size 64"):
        DenseDrafter(store, hidden_size=96)
    DenseDrafter(store, model=model)  # the right model is accepted


# ------------------------------------------------------------------------------------------ drafter
def step_at(model, sequence, t: int, tree_len: int = 1) -> StepFeedback:
    """Feedback as the engine gives it after committing ``sequence[:t + 2]``: the last accepted node is token ``t``
    and its hidden state predicts the bonus ``sequence[t + 1]``."""
    states = torch.from_numpy(hidden_states(model, sequence[None, : t + 1])[0])
    accepted = np.arange(tree_len, dtype=np.int64)
    hidden = states[t + 1 - tree_len: t + 1]
    tree = DraftTree.from_chain(int(sequence[t + 1 - tree_len]), sequence[t + 2 - tree_len: t + 1].tolist())
    return StepFeedback(tree=tree, accepted=accepted, new_tokens=sequence[t + 2 - tree_len: t + 2],
                        context=sequence[: t + 2], logits=None, hidden=hidden)


def test_first_step_is_root_only(store, sequence):
    drafter = DenseDrafter(store)
    drafter.begin(sequence[:8])
    assert len(drafter.draft(sequence[:8], 16)) == 1


def test_drafts_the_true_continuation(store, model, sequence):
    drafter = DenseDrafter(store, IdTokenizer(), model=model, k=8, max_depth=6)
    drafter.begin(sequence[:8])
    hits = 0
    checked = 0
    for t in range(10, len(sequence) - 10, 7):
        drafter.feedback(step_at(model, sequence, t, tree_len=3))
        ctx = sequence[: t + 2]
        tree = drafter.draft(ctx, 16)
        check_tree(tree, ctx, 16)
        checked += 1
        hits += best_path(tree)[:6] == sequence[t + 2: t + 8].tolist()
    assert hits == checked
    # a stale query (context moved on without feedback) drafts nothing
    assert len(drafter.draft(sequence[: len(sequence) - 1], 16)) == 1


def test_online_store_retrieves_from_the_session():
    """Synthetic states that are a function of the last two tokens: a repeat of earlier text queries exactly the
    keys of its first occurrence, so the session's own continuation is drafted."""
    rng = np.random.default_rng(4)
    emb_a, emb_b = rng.normal(size=(VOCAB, 16)), rng.normal(size=(VOCAB, 16))
    motif = rng.integers(1, VOCAB, 30)
    session = np.concatenate([motif, motif[:20]])

    def state(p):
        return emb_a[session[p]] + emb_b[session[p - 1]]

    drafter = DenseDrafter(None, hidden_size=16, online=True, k=4, max_depth=6)
    drafter.begin(session[:5])
    for t in range(4, len(session) - 1):  # one accepted node per step (the node at t), bonus t + 1
        ctx = session[: t + 2]
        hidden = torch.tensor(state(t), dtype=torch.float32)[None]
        drafter.feedback(StepFeedback(tree=DraftTree.root_only(int(session[t])), accepted=np.zeros(1, np.int64),
                                      new_tokens=session[t + 1: t + 2], context=ctx, logits=None, hidden=hidden))
        tree = drafter.draft(ctx, 16)
        check_tree(tree, ctx, 16)
        if t >= 34:  # inside the repeat: its first occurrence (30 tokens back, keys from t = 4 on) has the same states
            assert best_path(tree) == session[t - 28: t - 22].tolist()
    assert drafter.online.size == len(session) - 5


def test_engine_output_is_unchanged(store, model, sequence):
    import draftless

    drafter = DenseDrafter(store, model=model, k=8, online=True)
    ids = torch.from_numpy(sequence[:8])[None]
    out = draftless.generate(model, ids, drafter=drafter, max_new_tokens=100)
    assert out.sequences[0].tolist() == sequence[:108].tolist()
    assert out.stats.mean_accepted > 2.0


# ------------------------------------------------------------------------------------------ compressed (ivfpq)
@pytest.fixture(scope="module")
def ivfpq_store(model, sequence, tmp_path_factory):
    return saved_store(model, sequence, tmp_path_factory, "ivfpq")


def test_ivfpq_store_reopens_without_positions(ivfpq_store, sequence):
    loaded = load_index(DenseStore, ivfpq_store, verify="full")
    assert not (ivfpq_store / "positions.npy").exists() and loaded.positions is None
    assert loaded.store_meta["key_ids"] == "positions" and loaded.store_meta["search"]["nprobe"] == 32
    assert np.array_equal(loaded.indexed_positions(), np.arange(len(sequence) - 1))
    keys = loaded.keys()
    assert keys.shape == (len(sequence) - 1, 32)
    # a key's nearest neighbour is (nearly always) itself, found by its position
    _, pos = loaded.search_positions(keys, 1)
    assert np.mean(pos[:, 0] == np.arange(len(keys))) > 0.9
    assert load_index(DenseStore, ivfpq_store, nprobe=4).search_params["nprobe"] == 4


def test_ivfpq_greedy_output_is_unchanged(ivfpq_store, model, sequence):
    import draftless

    drafter = DenseDrafter(ivfpq_store, IdTokenizer(), model=model, k=8)
    ids = torch.from_numpy(sequence[:8])[None]
    out = draftless.generate(model, ids, drafter=drafter, max_new_tokens=100)
    assert out.sequences[0].tolist() == sequence[:108].tolist()
    assert out.stats.mean_accepted > 1.5  # retrieval from compressed keys still drafts the continuation


def test_ivfpq_store_is_at_most_32_bytes_per_token(model, tmp_path):
    """28 bytes per key (4 token, 8 FAISS id, 16 code) plus fixed costs (PCA, centroids, codebooks: about 25 kB at
    dim 16): 16k tokens amortise them under 32 bytes per token, every file counted. Without the OPQ rotation
    (dim x dim floats, 1 kB here; the greedy test above covers it), whose training would take half a minute."""
    tokens = np.random.default_rng(5).integers(1, VOCAB, 16_000).astype(np.int32)
    built = build_dense_store(model, tokens, dim=16, index="ivfpq", window=256, overlap=16, batch_size=8,
                              progress=False, index_kw={"opq": False})
    path = save_index(built, tmp_path / "pq", None)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert size / len(tokens) <= 32, size / len(tokens)
    assert len(load_index(DenseStore, path)) == len(tokens) - 1


def test_old_layout_opens_as_before(store, tmp_path):
    """A store written before search parameters and ``key_ids`` were recorded (positions.npy, bare meta) opens and
    searches as the current layout does."""
    current = load_index(DenseStore, store)
    arrays, _ = current.to_arrays()
    old = tmp_path / "old"
    write_store(old, "dense", arrays, tokenizer_identity(IdTokenizer()), {"test": True},
                {"model": current.store_meta["model"], "index_type": "flat", "separator_id": None})
    loaded = load_index(DenseStore, old)
    assert loaded.positions is not None and loaded.search_params == {"ef_search": 64, "nprobe": 32}
    q = current.keys()[:5]
    assert np.array_equal(loaded.search_positions(q, 4)[1], current.search_positions(q, 4)[1])


def test_ivfpq_refuses_a_bad_dimension_split():
    from draftless.index.dense_index import pq_bits, pq_subquantizers

    assert pq_subquantizers(96) == 16 and pq_subquantizers(30) == 15 and pq_subquantizers(7) == 7
    assert pq_bits(100_000) == 8 and pq_bits(100) == 6 and pq_bits(2) == 1
    with pytest.raises(ValueError, match="positive"):
        pq_subquantizers(32, 0)
    with pytest.raises(ValueError, match="ids need an IVF kind"):
        index_keys(unit(np.random.default_rng(0).normal(size=(10, 8))), "flat", ids=np.arange(10))
