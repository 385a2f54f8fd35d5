"""In-memory index structures over token streams (suffix automaton, suffix array, dense hidden-state index) and their
numba kernels (``kernels/``). Each structure saves to and loads from a datastore (``draftless.stores``)."""
