"""In-memory index structures over token streams, arrays in and arrays out: ``suffix_automaton``, ``suffix_array``,
``sharded_suffix_array`` (several suffix arrays queried as one), ``dense_index`` (hidden-state keys searched with
FAISS), ``ngram_pool`` (lookahead's bounded n-gram pool), ``top_k`` (each row's most likely tokens, for token recycling)
and ``tokens`` (token-array checks), with their numba
kernels in ``kernels/``. The structures a datastore holds give their arrays (``to_arrays``) and are rebuilt from them
(``from_arrays``); the files are ``draftless.stores``'s."""
