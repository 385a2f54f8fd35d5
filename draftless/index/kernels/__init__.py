"""Numba kernels of the index structures (arrays in, arrays out; the facades live one folder up):
``sam_kernels`` (suffix automata), ``suffix_array_kernels`` (suffix arrays and continuation tries) and
``top_k_kernels`` (the largest entries of each row)."""
