"""The application layer, on top of everything else: the ``draftless`` command line (``cli``: ``generate``,
``bench``, ``build``, ``profile``), the benchmarks (``bench``; ``batch_bench``: ``bench --batch-size``;
``stream_bench``: ``bench --stream``, over the request streams of ``streams``; ``grammar_workloads``:
``bench --structured``), ``profile`` (t(n) by stage),
``prompts`` (prompt files and chat templates) and ``replay`` (drafter settings judged on a recorded stream, without
the target)."""
