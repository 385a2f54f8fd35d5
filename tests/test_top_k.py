"""``draftless.index.top_k``: the blocked top-k kernel against a sort of every row (the slow obvious oracle)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from draftless.index.top_k import top_k_with_probs


def oracle(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest columns, largest first, the lower column first among equal values (a stable sort)."""
    return np.argsort(-x, axis=1, kind="stable")[:, :k].astype(np.int32)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5), width=st.integers(1, 300), k=st.integers(1, 12), levels=st.integers(2, 50),
       seed=st.integers(0, 2**31 - 1), with_inf=st.booleans())
def test_top_k_equals_a_stable_sort_of_each_row(n, width, k, levels, seed, with_inf):
    """Few distinct values (ties everywhere), widths across the 64-entry blocks, -inf entries as a logits
    processor leaves them."""
    k = min(k, width)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, size=(n, width)).astype(np.float32)
    if with_inf:
        x[rng.random((n, width)) < 0.5] = -np.inf
    ids, probs = top_k_with_probs(torch.from_numpy(x), k)
    np.testing.assert_array_equal(ids, oracle(x, k))
    expected = torch.softmax(torch.from_numpy(x), dim=-1).numpy()[np.arange(n)[:, None], ids]
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert ids.dtype == np.int32 and probs.dtype == np.float32


def test_top_k_on_a_real_vocabulary_width_and_other_layouts():
    """Gemma 3's vocabulary width, random logits; a non-contiguous and a bfloat16 input give the same columns as
    their float32 contiguous copies."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 262_144, generator=g) * 4
    ids, probs = top_k_with_probs(x, 8)
    np.testing.assert_array_equal(ids, oracle(x.numpy(), 8))
    np.testing.assert_allclose(probs, torch.softmax(x, -1).gather(1, torch.from_numpy(ids).long()).numpy(), rtol=1e-6)
    strided = torch.randn(64, 4, generator=g).t()
    np.testing.assert_array_equal(top_k_with_probs(strided, 3)[0], oracle(strided.contiguous().numpy(), 3))
    half = torch.randn(3, 500, generator=g).bfloat16()
    np.testing.assert_array_equal(top_k_with_probs(half, 5)[0], oracle(half.float().numpy(), 5))


def test_top_k_of_no_rows_and_bad_arguments():
    ids, probs = top_k_with_probs(torch.zeros(0, 10), 4)
    assert ids.shape == probs.shape == (0, 4)
    with pytest.raises(ValueError, match="1 <= k <= V"):
        top_k_with_probs(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match=r"\[n, V\]"):
        top_k_with_probs(torch.zeros(3), 1)
