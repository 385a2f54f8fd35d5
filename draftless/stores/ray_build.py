"""Sharded ``"rest"`` stores built on Ray: ``draftless build --kind rest --shards N --ray [--address ADDR]``.

The pipeline (the store it writes is ``draftless.stores.sharded``'s, the one the in-process build writes):

1. **Plan** (driver): the corpus files in reading order (``documents.corpus_files``: directories, patterns, text,
   jsonl, parquet) grouped into *units* of about ``unit_bytes``: runs of whole files; a large jsonl file cut into
   line-aligned byte ranges, a large parquet file into row groups. A unit holds whole documents.
2. **Tokenize** (Ray Data): the units as a dataset, ``map_batches`` over a pool of actors, each holding the target's
   tokenizer (one CPU each, the Rust tokenizer's batch encoding single-threaded inside). An actor reads its unit's
   documents (``documents.read_file``: exactly the in-process reader; with ``exclude_overlap`` filtered by
   ``decontaminate.filter_pieces``), tokenizes them in batches, joins them with
   the separator (``corpus.tokenize_pieces``) and writes the unit's tokens to ``OUT/.units/``; only counts go back.
3. **Shard** (driver): consecutive units grouped into ``shards`` groups of about equal tokens, cut between units,
   hence between documents.
4. **Index** (Ray tasks, one per shard): the shard's units joined with the separator, its separator-first suffix
   array built (libdivsufsort) and written as ``OUT/shard-NNNNN`` (``sharded.write_shard``).
5. **Manifest** (driver): written last, atomically; ``OUT/.units`` removed.

Documents keep the in-process order, so the shards hold exactly the documents (and tokens) an in-process build
reads, and drafts are identical to a one-shard store's. With no ``address`` Ray is started here
(``num_cpus``, a small object store, no dashboard, quiet logs) and shut down after; with one, the cluster's workers
need draftless installed and ``OUT`` and the corpus on a filesystem they share.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..tokenizer_identity import tokenizer_identity
from .build import BuildReport, _jsonable, _peak_rss_bytes, _reset_peak_rss, _rss_bytes
from .corpus import BATCH_CHARS, separator_token, tokenize_pieces
from .decontaminate import DecontaminationReport, filter_pieces, merge_reports, new_report
from .documents import PIECE_CHARS, corpus_files, read_file
from .sharded import UNITS_DIR, prepare_sharded_dir, write_manifest, write_shard


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError("--ray needs Ray Data: pip install 'draftless[ray]'") from exc
    return ray


# ---------------------------------------------------------------------------------------------- plan
def _jsonl_ranges(path: Path, unit_bytes: int) -> list[tuple[int, int]]:
    """``[start, end)`` byte ranges of about ``unit_bytes`` covering the file, each starting at a line start."""
    size = path.stat().st_size
    starts = [0]
    with open(path, "rb") as f:
        while starts[-1] + unit_bytes < size:
            f.seek(starts[-1] + unit_bytes)
            f.readline()
            if f.tell() >= size:
                break
            starts.append(f.tell())
    return list(zip(starts, starts[1:] + [size]))


def _parquet_groups(path: Path, unit_bytes: int) -> list[tuple[int, ...]]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    groups: list[tuple[int, ...]] = []
    current: list[int] = []
    size = 0
    for g in range(meta.num_row_groups):
        current.append(g)
        size += meta.row_group(g).total_byte_size
        if size >= unit_bytes:
            groups.append(tuple(current))
            current, size = [], 0
    if current:
        groups.append(tuple(current))
    return groups


def plan_units(files: Sequence[Path], unit_bytes: int) -> list[list[tuple[str, list | None]]]:
    """The units of a corpus (step 1 of the module docstring): lists of ``(file, part)``, ``part`` None for a whole
    file, ``[start, end]`` for a jsonl byte range, ``[g0, g1, ...]`` for parquet row groups."""
    units: list[list[tuple[str, list | None]]] = []
    current: list[tuple[str, list | None]] = []
    size = 0
    for file in files:
        file_size = file.stat().st_size
        if file_size > unit_bytes and file.suffix in (".jsonl", ".parquet"):
            if current:
                units.append(current)
                current, size = [], 0
            parts = (_jsonl_ranges(file, unit_bytes) if file.suffix == ".jsonl"
                     else _parquet_groups(file, unit_bytes))
            units += [[(str(file), list(part))] for part in parts]
            continue
        current.append((str(file), None))
        size += file_size
        if size >= unit_bytes:
            units.append(current)
            current, size = [], 0
    if current:
        units.append(current)
    return units


def group_units(unit_tokens: Sequence[int], shards: int) -> list[list[int]]:
    """Consecutive units in at most ``shards`` groups of about equal tokens: a group ends once the tokens so far
    reach its share of the total, and never before it holds a token (units without tokens join a neighbour)."""
    total = sum(unit_tokens)
    groups: list[list[int]] = [[]]
    done = 0
    current = 0
    for i, n in enumerate(unit_tokens):
        if current and len(groups) < shards and done >= total * len(groups) / shards:
            groups.append([])
            current = 0
        groups[-1].append(i)
        done += n
        current += n
    if len(groups) > 1 and not current:  # trailing units without tokens
        last = groups.pop()
        groups[-1] += last
    return groups


# ---------------------------------------------------------------------------------------------- the Ray work
class TokenizeUnits:
    """Ray Data actor: reads (and decontaminates) units, tokenizes them, writes each unit's tokens to
    ``units_dir``; returns counts, and per unit the documents decontamination dropped (JSON, unit-local indices)."""

    def __init__(self, tokenizer, fields, units_dir: str, separator_id: int, batch_chars: int, piece_chars: int,
                 exclude_overlap: str | None = None, overlap_n: int = 13):
        self.tokenizer = tokenizer
        self.fields = list(fields) if fields else None
        self.units_dir = Path(units_dir)
        self.sep = int(separator_id)
        self.batch_chars = int(batch_chars)
        self.piece_chars = int(piece_chars)
        self.exclude_overlap = exclude_overlap
        self.overlap_n = int(overlap_n)
        self.ngrams = None
        if exclude_overlap:  # the evaluation prompts' n-gram automaton, built once per actor
            self.ngrams = new_report(exclude_overlap, overlap_n).index

    def _pieces(self, spec: list):
        for file, part in spec:
            yield from read_file(Path(file), self.fields, self.piece_chars, None if part is None else tuple(part))

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {"unit": [], "n_documents": [], "n_tokens": [], "n_bytes": [], "seconds": [],
                                "decontamination": []}
        for unit, spec in zip(batch["unit"], batch["spec"]):
            t0 = time.perf_counter()
            pieces = self._pieces(json.loads(spec))
            report = None
            if self.ngrams is not None:
                report = new_report(self.exclude_overlap, self.overlap_n, index=self.ngrams)
                pieces = filter_pieces(pieces, self.exclude_overlap, self.overlap_n, report=report)
            tokens, n_docs, n_bytes = tokenize_pieces(pieces, self.tokenizer, self.sep, self.batch_chars)
            out["decontamination"].append(json.dumps(report.to_json()) if report is not None else "")
            target = self.units_dir / f"unit-{int(unit):08d}.npy"
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:  # a retried task rewrites the same file
                np.save(fh, tokens, allow_pickle=False)
            os.replace(tmp, target)
            out["unit"].append(int(unit))
            out["n_documents"].append(n_docs)
            out["n_tokens"].append(int(len(tokens)))
            out["n_bytes"].append(n_bytes)
            out["seconds"].append(time.perf_counter() - t0)
        return {k: np.asarray(v) for k, v in out.items()}


def _tokenize_stage(ds, **kwargs):
    """``map_batches`` of ``TokenizeUnits``: one unit a call, one CPU an actor, the Rust tokenizer single-threaded
    in each. ``max_restarts=0``: a lost actor fails the build (rerun it) rather than restarting without the
    constructor arguments Ray Data keeps in the object store (ray-project/ray#53727); passed the deprecated way,
    the only one Ray 2.60 has, and dropped where a later Ray refuses it."""
    common = dict(batch_size=1, num_cpus=1, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return ds.map_batches(TokenizeUnits, max_restarts=0, **common)
        except TypeError:
            return ds.map_batches(TokenizeUnits, **common)


def _build_shard(unit_files: list[str], unit_docs: list[int], out_dir: str, index: int, separator_id: int,
                 identity: dict, build_args: dict, sa_method: str | None) -> dict:
    """One shard (a Ray task): its units' tokens joined by the separator, indexed and written."""
    rss_before = _rss_bytes()
    tracked = _reset_peak_rss()
    parts: list[np.ndarray] = []
    sep = np.array([separator_id], dtype=np.int32)
    for file, n_docs in zip(unit_files, unit_docs):
        if not n_docs:
            continue
        if parts:
            parts.append(sep)
        parts.append(np.load(file, allow_pickle=False))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts
    stats = write_shard(tokens, out_dir, index, separator_id, identity, sum(unit_docs), build_args, sa_method)
    peak = _peak_rss_bytes() if tracked else None
    stats["peak_rss_added"] = peak - rss_before if peak is not None and rss_before is not None else None
    return stats


# ---------------------------------------------------------------------------------------------- driver
def _start_ray(ray, address: str | None, num_cpus: int | None, object_store_bytes: int) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it (and should stop it)."""
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, object_store_memory=object_store_bytes, **quiet)
    return True


def _quiet_ray_data(ray):
    """Set this process's Ray Data context for the build (no progress bars, ordered output, quiet logs); returns
    a function that puts the previous settings back."""
    ctx = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    before = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order,
              ctx.execution_options.verbose_progress, logger.level)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True  # units come back in corpus order (they are also sorted below)
    ctx.execution_options.verbose_progress = False
    logger.setLevel(logging.ERROR)

    def restore() -> None:
        (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order,
         ctx.execution_options.verbose_progress, level) = before
        logger.setLevel(level)

    return restore


def build_sharded_store_ray(corpus_paths: Sequence[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
                            shards: int, fields: Sequence[str] | None = None, glob: str | None = None,
                            exclude: Sequence[str] = (), address: str | None = None, num_cpus: int | None = None,
                            sa_method: str | None = None, unit_bytes: int | None = None,
                            batch_chars: int = BATCH_CHARS, piece_chars: int = PIECE_CHARS,
                            object_store_bytes: int = 256 << 20, exclude_overlap: str | os.PathLike | None = None,
                            overlap_n: int = 13, provenance: dict | None = None, verbose: bool = True) -> BuildReport:
    """Build a sharded ``"rest"`` store at ``out_dir`` on Ray (the module docstring's pipeline).

    ``tokenizer``: the target's (fast) tokenizer, shipped to the actors; ``unit_bytes``: corpus bytes per unit of
    work (default: the corpus split into 8 units per shard and per CPU, between 64 kB and 64 MB). Returns a
    ``BuildReport`` whose ``tokenize_s`` is the Ray Data stage, ``build_s`` the shard tasks and the manifest, and
    ``peak_rss_bytes`` the largest any shard task added. ``exclude_overlap``: an evaluation prompt file; each actor
    drops the documents sharing a word ``overlap_n``-gram with its prompts (``draftless.stores.decontaminate``, as
    the in-process build does) and the units' reports are merged into the manifest's ``decontamination``.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if exclude_overlap and not Path(exclude_overlap).is_file():  # checked here, not first inside a Ray actor
        raise FileNotFoundError(f"--exclude-overlap file not found: {exclude_overlap}")
    ray = _require_ray()
    identity = tokenizer_identity(tokenizer)
    sep = separator_token(tokenizer)
    files = corpus_files(corpus_paths, glob, exclude)
    total_bytes = sum(f.stat().st_size for f in files)
    if not files or total_bytes == 0:
        raise ValueError(f"the corpus {list(map(str, corpus_paths))} holds no files with data (check --glob)")
    build_args = {"kind": "rest", "corpus": [str(p) for p in corpus_paths], "fields": list(fields) if fields else None,
                  "glob": glob, "exclude": list(exclude), "shards": int(shards), "sa_method": sa_method, "ray": True,
                  "exclude_overlap": str(exclude_overlap) if exclude_overlap else None,
                  **{k: _jsonable(v) for k, v in (provenance or {}).items()}}
    out = prepare_sharded_dir(out_dir)
    units_dir = out / UNITS_DIR
    units_dir.mkdir()
    started = _start_ray(ray, address, num_cpus, object_store_bytes)
    restore = _quiet_ray_data(ray)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if unit_bytes is None:
            unit_bytes = int(min(64 << 20, max(64 << 10, total_bytes // (8 * shards * cpus))))
        units = plan_units(files, unit_bytes)
        t0 = time.perf_counter()
        items = [{"unit": i, "spec": json.dumps(u)} for i, u in enumerate(units)]
        ds = _tokenize_stage(ray.data.from_items(items, override_num_blocks=min(len(items), 4 * cpus)),
                             concurrency=min(cpus, len(items)),
                             fn_constructor_args=(tokenizer, fields, str(units_dir), sep, batch_chars, piece_chars,
                                                  str(exclude_overlap) if exclude_overlap else None, overlap_n))
        rows = sorted(ds.take_all(), key=lambda r: int(r["unit"]))
        tokenize_s = time.perf_counter() - t0
        if len(rows) != len(units):
            raise RuntimeError(f"Ray Data returned {len(rows)} of {len(units)} units")
        unit_tokens = [int(r["n_tokens"]) for r in rows]
        if sum(unit_tokens) == 0:
            raise ValueError(f"the corpus {list(map(str, corpus_paths))} holds no tokens (check --glob / --field)")
        t1 = time.perf_counter()
        groups = group_units(unit_tokens, shards)
        build = ray.remote(num_cpus=1, max_retries=2)(_build_shard)
        futures = [build.remote([str(units_dir / f"unit-{i:08d}.npy") for i in g],
                                [int(rows[i]["n_documents"]) for i in g], str(out), k, sep, identity,
                                _jsonable(build_args), sa_method)
                   for k, g in enumerate(groups)]
        written = ray.get(futures)
    finally:
        restore()
        if started:
            ray.shutdown()
    extra: dict = {"corpus_bytes": int(sum(int(r["n_bytes"]) for r in rows))}
    decontamination: DecontaminationReport | None = None
    if exclude_overlap:
        decontamination = merge_reports([json.loads(str(r["decontamination"])) for r in rows])
        extra["decontamination"] = decontamination.to_json()
    manifest = write_manifest(out, [w["name"] for w in written], identity, sep, build_args, extra)
    build_s = time.perf_counter() - t1
    shutil.rmtree(units_dir, ignore_errors=True)
    disk = sum(s["bytes"] for s in manifest["shards"]) + (out / "manifest.json").stat().st_size
    peaks = [w["peak_rss_added"] for w in written if w.get("peak_rss_added") is not None]
    stats = {"shards": len(written), "units": len(units), "ray_cpus": cpus,
             "construct_s": sum(w["construct_s"] for w in written), "write_s": sum(w["write_s"] for w in written),
             "largest_shard_tokens": max(w["n_tokens"] for w in written),
             "tokenize_cpu_s": float(sum(float(r["seconds"]) for r in rows))}
    report = BuildReport("rest", out, manifest["n_tokens"], manifest["n_documents"], tokenize_s, build_s, disk,
                         max(peaks) if peaks else None, stats)
    if verbose:
        if decontamination is not None:
            print(decontamination.summary(), flush=True)
        print(report.summary(), flush=True)
    return report
