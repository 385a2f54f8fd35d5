"""Datastores on disk: the format (``datastore.py``), the registry of store kinds and their builders (``kinds.py``),
``build_store`` (``build.py``), corpus reading (``corpus.py``) and decontamination (``decontaminate.py``)."""
