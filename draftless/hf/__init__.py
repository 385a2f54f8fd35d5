"""The boundary with transformers: the only package that reads transformers internals.

``attention`` (attention layouts and tree masks), ``kv_cache`` (cache surgery), ``generation`` (``model.generate``'s
argument resolution, processors, criteria and output class), ``compat`` (differences between transformers versions,
private attributes), ``layer_view`` (a model restricted to some decoder layers), ``loading`` (``load_model``, shipped
models, GGUF conversion), ``derive`` (shallow draft models), ``weights`` (copying weights into a fresh model) and
``tiny_models`` (tiny random models of four architectures, for the tests and the device check)."""
