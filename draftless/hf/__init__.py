"""The boundary with transformers: the only package that reads transformers internals (attention layout and tree
masks, the KV cache, decoder-layer views, model loading and GGUF conversion, derived draft models)."""
