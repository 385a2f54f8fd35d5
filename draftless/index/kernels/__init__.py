"""Numba kernels of the index structures (arrays in, arrays out; the facades live one folder up):
``sam_kernels`` (suffix automata) and ``suffix_array_kernels`` (suffix arrays and continuation tries)."""
