"""Datastores on disk: the format (``datastore``), index structures as datastores (``indexes``: ``save_index``,
``load_index``), the registry of store kinds and their builders (``kinds``), ``build_store`` (``build``), sharded
stores (``sharded``: the manifest, writing and opening shards; ``ray_build``: building them on Ray), the dense
store's build (``dense_build``; ``ray_dense_build``: its model pass on Ray Data), reading corpus files into
documents (``documents``), tokenizing a corpus (``corpus``) and decontamination (``decontaminate``)."""
