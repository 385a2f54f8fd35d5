"""Numba kernels of the verification fast path (arrays in, arrays out; the facades live one folder up)."""
