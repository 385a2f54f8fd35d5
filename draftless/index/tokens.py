"""The token arrays every index is built from and queried with."""
from __future__ import annotations

import numpy as np

# The suffix automaton has always taken ids in [0, 2**31 - 1) and the suffix array [0, 2**31 - 1]; every index now
# takes the same ids, the narrower range (no tokenizer comes near either bound).
MAX_TOKEN_ID = np.iinfo(np.int32).max - 1


def as_token_array(tokens) -> np.ndarray:
    """``tokens`` as a contiguous int32[n] array (no copy when it already is one); ``ValueError`` unless it is
    one-dimensional with every id in ``[0, MAX_TOKEN_ID]``."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > MAX_TOKEN_ID):
        raise ValueError(f"token ids must lie in [0, {MAX_TOKEN_ID}]")
    return np.ascontiguousarray(arr, dtype=np.int32)
