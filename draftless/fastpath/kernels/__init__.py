"""Numba kernels of the verification fast path (arrays in, arrays out; the facades live one folder up):
``skinny_gemm`` (few-row fp32 linears reading each weight once) and ``prefetch`` (the prefetch intrinsic it uses)."""
