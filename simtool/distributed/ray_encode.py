"""Ray Data batch encoding: corpus files read by Ray tasks, an actor pool of encoders, order kept.

This is the pattern Ray documents for sentence-transformers batch inference: ``map_batches`` over a
callable class, so each actor loads the model once and encodes many batches. Files are read with
simtool's own readers (one read task per file), so ids, titles and errors are exactly the
single-process ones; Parquet files are read with pyarrow (``id``/``_id``, ``text``, ``title`` columns).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simtool.atomic import atomic_open, atomic_path
from simtool.chunking import DEFAULT_CHUNK_OVERLAP
from simtool.corpus import Document, read_documents
from simtool.errors import CorpusError, SimtoolError
from simtool.validate import check_batch_size, check_positive

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

RAY_EXTRA_HINT = "Ray is not installed; run `pip install 'simtool[ray]'`"
READ_BLOCK_ROWS = 4096  # rows per block a read task yields: small enough to stream, big enough to batch
READ_CPUS = 0.25  # a read task parses text; it must find a CPU slot beside the encoder actors


def require_ray() -> Any:
    """Import ``ray`` or raise a one-line :class:`SimtoolError` naming the ``ray`` extra."""
    try:
        import ray
        import ray.data  # Ray Data ships in the same extra; fail here, not mid-job
    except ImportError:
        raise SimtoolError(RAY_EXTRA_HINT) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` ``"auto"`` joins a running cluster, ``None`` starts a local one.

    ``workers``: encoder actors (default: one per CPU, or per GPU when ``gpus_per_worker`` > 0).
    ``gpus_per_worker``: ``num_gpus`` of each actor (0 on CPU-only clusters; fractions share a GPU).
    ``cpus_per_worker``: ``num_cpus`` of each actor; ``None`` shares the cluster's CPUs among the actors
    less :data:`READ_CPUS` for the read tasks, so actors never hold every CPU and starve the reads.
    ``num_cpus``: CPUs of a local cluster started here (``None``: all of them).
    ``batch_size``: rows per ``map_batches`` call (the encoder's own forward batch is separate).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    num_cpus: int | None = None
    batch_size: int = 1024

    def validate(self) -> None:
        if self.workers is not None:
            check_positive("workers", self.workers)
        if self.gpus_per_worker < 0:
            raise SimtoolError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        check_batch_size(self.batch_size)
        if self.cpus_per_worker is not None:
            check_positive("cpus_per_worker", self.cpus_per_worker)
        if self.num_cpus is not None:
            check_positive("num_cpus", self.num_cpus)

    def plan(self, cluster_cpus: float, cluster_gpus: float) -> tuple[int, float]:
        """``(workers, cpus_per_worker)`` on a cluster with these resources."""
        if self.gpus_per_worker and cluster_gpus < self.gpus_per_worker:
            raise SimtoolError(f"gpus_per_worker is {self.gpus_per_worker} but the Ray cluster has {cluster_gpus} GPUs")
        spare = max(cluster_cpus - READ_CPUS, READ_CPUS)
        if self.workers is not None:
            workers = self.workers
        elif self.gpus_per_worker:
            workers = max(1, int(cluster_gpus // self.gpus_per_worker))
        else:
            workers = max(1, int(cluster_cpus))
        cpus = self.cpus_per_worker if self.cpus_per_worker is not None else spare / workers
        if workers * cpus > spare + 1e-9:
            raise SimtoolError(
                f"workers={workers} x cpus_per_worker={cpus} leaves no CPU for reading on a "
                f"{cluster_cpus:g}-CPU Ray cluster; lower workers or cpus_per_worker"
            )
        return workers, cpus


def init_ray(options: RayOptions) -> Any:
    """Connect to (or start) Ray once per process; a running ``ray.init`` is reused as it is."""
    ray = require_ray()
    options.validate()
    # Ray's driver-side INFO/WARNING lines (progress reports, auth notice) would bury simtool's own
    # output; they stay in Ray's session logs, and errors still surface as exceptions.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Ray counts read tasks (one per file), not the blocks each yields: with one file it warns that the
    # actor pool "won't fully utilize" its actors, though every actor gets blocks (block_rows below).
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": options.address, "log_to_driver": False, "logging_level": logging.ERROR}
        if options.address is None and options.num_cpus is not None:
            kwargs["num_cpus"] = options.num_cpus
        ray.init(**kwargs)
    return ray


# --------------------------------------------------------------------------- reading


def _parquet_documents(
    path: Path, text_field: str | None, id_field: str | None, title_field: str | None
) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
    names = table.schema_arrow.names
    text_key = text_field or "text"
    id_key = id_field or next((k for k in ("_id", "id") if k in names), None)
    title_key = title_field or "title"
    if text_key not in names:
        raise CorpusError(f"{path}: no column {text_key!r} in {names}")
    if id_field and id_field not in names:
        raise CorpusError(f"{path}: no column {id_field!r} in {names}")
    row = 0
    seen: set[str] = set()
    for batch in table.iter_batches(batch_size=READ_BLOCK_ROWS):
        cols = batch.to_pydict()
        for i, text in enumerate(cols[text_key]):
            row += 1
            if not isinstance(text, str):
                raise CorpusError(f"{path}: row {row}: column {text_key!r} must be a string")
            doc_id = str(cols[id_key][i]) if id_key else str(row)
            if doc_id in seen:
                raise CorpusError(f"{path}: row {row}: duplicate id {doc_id!r}")
            seen.add(doc_id)
            title = cols[title_key][i] if title_key in cols else None
            yield Document(id=doc_id, text=text, title=title or None)


def iter_corpus(
    path: Path, text_field: str | None = None, id_field: str | None = None, title_field: str | None = None
) -> Iterator[Document]:
    """The documents of one corpus file, any format simtool reads plus ``.parquet``."""
    if path.suffix.lower() == ".parquet":
        return _parquet_documents(path, text_field, id_field, title_field)
    return read_documents(path, text_field=text_field, id_field=id_field, title_field=title_field)


def _rows_block(docs: Sequence[Document], file_index: int, first_row: int) -> Any:
    import pyarrow as pa

    return pa.table(
        {
            "id": [d.id for d in docs],
            "encoded_text": [d.encoded_text for d in docs],
            "title": [d.title for d in docs],
            "text": [d.text for d in docs],
            "metadata": [json.dumps(d.metadata, ensure_ascii=False) for d in docs],
            "file": np.full(len(docs), file_index, dtype=np.int32),
            "row": np.arange(first_row, first_row + len(docs), dtype=np.int64),
        }
    )


def _read_file_blocks(
    path: Path,
    file_index: int,
    text_field: str | None,
    id_field: str | None,
    title_field: str | None,
    block_rows: int = READ_BLOCK_ROWS,
) -> Iterator[Any]:
    chunk: list[Document] = []
    row = 0
    for doc in iter_corpus(path, text_field, id_field, title_field):
        chunk.append(doc)
        if len(chunk) == block_rows:
            yield _rows_block(chunk, file_index, row)
            row += len(chunk)
            chunk = []
    if chunk:
        yield _rows_block(chunk, file_index, row)


def _corpus_datasource(paths: Sequence[Path], fields: dict[str, str | None], block_rows: int) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class CorpusDatasource(Datasource):
        """One read task per file, so a file's rows stay in order and errors name its lines."""

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(p.stat().st_size for p in paths)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, **_: Any) -> list[Any]:
            tasks = []
            for i, path in enumerate(paths):
                meta = BlockMetadata(
                    num_rows=None, size_bytes=path.stat().st_size, exec_stats=None, input_files=(str(path),)
                )
                read = functools.partial(
                    _read_file_blocks, path, i, fields["text"], fields["id"], fields["title"], block_rows
                )
                tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
            return tasks

    return CorpusDatasource()


def corpus_dataset(
    paths: Sequence[str | Path], options: RayOptions, fields: dict[str, str | None] | None = None
) -> ray.data.Dataset:
    """:func:`ray_dataset` on the cluster ``options`` names, one block per ``options.batch_size`` rows;
    ``fields``: ``{"text", "id", "title"}`` column names (missing or None: the format's defaults)."""
    init_ray(options)
    fields = fields or {}
    return ray_dataset(
        paths,
        text_field=fields.get("text"),
        id_field=fields.get("id"),
        title_field=fields.get("title"),
        block_rows=options.batch_size,
    )


def ray_dataset(
    paths: Sequence[str | Path],
    *,
    text_field: str | None = None,
    id_field: str | None = None,
    title_field: str | None = None,
    block_rows: int = READ_BLOCK_ROWS,
) -> ray.data.Dataset:
    """A Ray dataset of the corpus rows (``id``, ``encoded_text``, ``title``, ``text``, ``metadata``, ``file``,
    ``row``), one read task per file, in file order then line order.

    A block is the unit an actor receives, so ``block_rows`` near the ``map_batches`` batch size spreads
    even a single file across every actor."""
    ray = require_ray()
    files = [Path(p) for p in paths]
    if not files:
        raise SimtoolError("paths must name at least one corpus file, got none")
    for p in files:
        if not p.is_file():
            raise CorpusError(f"{p}: no such file")
    fields = {"text": text_field, "id": id_field, "title": title_field}
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    return ray.data.read_datasource(
        _corpus_datasource(files, fields, block_rows), override_num_blocks=len(files), num_cpus=READ_CPUS
    )


# --------------------------------------------------------------------------- encoding


class EncoderActor:
    """A Ray Data callable class: loads the encoder once, then encodes batch after batch."""

    def __init__(
        self,
        model: str | None,
        pooling: str | None,
        max_seq_length: int | None,
        batch_size: int,
        threads: int | None = None,
        fingerprint: str | None = None,
        backend: str = "torch",
        long_text: dict[str, Any] | None = None,
    ) -> None:
        import torch

        from simtool.encoder import default_device, load_encoder, model_fingerprint

        if threads:
            torch.set_num_threads(threads)
        self.model = load_encoder(model, pooling, default_device(), max_seq_length, backend=backend)
        if fingerprint is not None and model_fingerprint(self.model) != fingerprint:
            # a worker whose copy of the model differs (another node, another file) would corrupt an index
            raise SimtoolError(f"model {model} on this Ray worker does not have the index's fingerprint {fingerprint}")
        self.batch_size = batch_size
        self.long_text = long_text or {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from simtool.chunking import encode_long
        from simtool.encoder import encode_texts

        texts = [str(t) for t in batch["encoded_text"]]
        if self.long_text:
            vectors = encode_long(self.model, texts, batch_size=self.batch_size, **self.long_text)
        else:
            vectors = encode_texts(self.model, texts, batch_size=self.batch_size)
        return {**batch, "embedding": vectors}


def ray_long_text(record: dict[str, Any] | None) -> dict[str, Any]:
    """The actors' long-text settings from a manifest-style record (``{}``: truncate; else ``mode``,
    ``chunk_tokens``, ``chunk_overlap``), as :func:`~simtool.chunking.encode_long` takes them.

    ``chunk-mean`` keeps one vector per document, the row the actors return; ``chunk-max`` gives a varying
    number per document, which this row-per-document pipeline does not carry yet.
    """
    from simtool.chunking import check_mode

    if not record or check_mode(record["mode"]) == "truncate":
        return {}
    if record["mode"] == "chunk-max":
        raise SimtoolError(
            "long_text='chunk-max' is not supported on Ray yet (a varying number of vectors per document); "
            "use chunk-mean or truncate, or build without Ray"
        )
    return {
        "mode": record["mode"],
        "chunk_tokens": record.get("chunk_tokens"),
        "chunk_overlap": record["chunk_overlap"],
    }


def resolve_backend(model: str | os.PathLike[str] | None, backend: str, options: RayOptions) -> str:
    """``backend``, with ``auto`` decided once by its rule (:mod:`simtool.backends.registry`) for the actors'
    device (CUDA when they get GPUs) on this driver's CPU flags and ``model``'s directory."""
    if backend != "auto":
        return backend
    from simtool.backends.registry import resolve_name
    from simtool.encoder import resolve_model_path

    return resolve_name(backend, "cuda" if options.gpus_per_worker else "cpu", resolve_model_path(model))


def actor_plan(options: RayOptions) -> tuple[int, float]:
    """``(workers, cpus_per_worker)`` for the connected Ray cluster."""
    resources = require_ray().cluster_resources()
    return options.plan(float(resources.get("CPU", 1)), float(resources.get("GPU", 0)))


def encoded_dataset(
    ds: ray.data.Dataset,
    model: str | None,
    pooling: str | None,
    max_seq_length: int | None,
    *,
    options: RayOptions,
    batch_size: int = 64,
    fingerprint: str | None = None,
    backend: str = "torch",
    long_text: dict[str, Any] | None = None,
) -> ray.data.Dataset:
    """``ds`` plus an ``embedding`` column, ``(d,) float32`` per row, from a pool of encoder actors.

    ``fingerprint``: every actor checks its model against it (an index's recorded model). ``backend``: a
    concrete encode backend, never ``auto``: resolved once on the driver, so that every node encodes the same
    way even where their CPUs differ. ``long_text``: a manifest-style record (:func:`ray_long_text`)."""
    if backend == "auto":
        raise SimtoolError("backend: resolve 'auto' on the driver before starting the actors")
    gpus = options.gpus_per_worker
    workers, cpus = actor_plan(options)
    # torch's default (every core) would oversubscribe actors sharing a node; a lone actor takes the spare CPUs
    threads = max(1, int(cpus + 0.5))
    log.info("Ray encode: %d workers x %.2f CPUs, %.2f GPUs each", workers, cpus, gpus)
    return ds.map_batches(
        EncoderActor,
        fn_constructor_kwargs={
            "model": model,
            "pooling": pooling,
            "max_seq_length": max_seq_length,
            "batch_size": batch_size,
            "threads": threads,
            "fingerprint": fingerprint,
            "backend": backend,
            "long_text": ray_long_text(long_text),
        },
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=require_ray().data.ActorPoolStrategy(size=workers),
        num_cpus=cpus,
        num_gpus=gpus or None,
    )


def encode_file_ray(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    model: str | None = None,
    pooling: str | None = None,
    max_seq_length: int | None = None,
    batch_size: int = 64,
    options: RayOptions = RayOptions(),
    fields: dict[str, str | None] | None = None,
    progress: bool = True,
    backend: str = "torch",
    long_text: str = "truncate",
    chunk_tokens: int | None = None,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> dict[str, Any]:
    """Encode corpus files on Ray into ``output`` (``.npy``, ``(n, d) float32``) and ``OUT.ids.json``.

    The rows come back in file then line order, so the result is the single-process ``encode_file``'s.
    ``backend``: the actors' encode backend (``auto`` is resolved here, on the driver). ``long_text``:
    ``truncate`` or ``chunk-mean`` (:mod:`simtool.chunking`), the window checked here against the model.
    Returns ``{"n", "dim", "ids", "workers", "seconds", "backend"}``. Both files are written atomically.
    """
    from simtool.encoder import ids_path_for, progress_bar

    backend = resolve_backend(model, backend, options)
    record = ray_long_text({"mode": long_text, "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap})
    if record:  # the window's bounds depend on the model: a bad one fails here, not in every actor
        from simtool.chunking import index_long_text
        from simtool.encoder import load_encoder

        record = index_long_text(load_encoder(model, pooling, "cpu", max_seq_length), **record)
    ds = corpus_dataset(paths, options, fields)
    encoded = encoded_dataset(
        ds, model, pooling, max_seq_length, options=options, batch_size=batch_size, backend=backend, long_text=record
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ids: list[str] = []
    dim = 0
    # Vectors stream to a scratch file as Ray yields them (n is unknown until the end), then into the .npy.
    fd, raw_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".raw", dir=output.parent)
    raw_path = Path(raw_name)
    try:
        with os.fdopen(fd, "wb") as raw, progress_bar(0, "encode (ray)", progress) as bar:
            for batch in encoded.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                vectors = np.ascontiguousarray(np.stack(list(batch["embedding"])), dtype=np.float32)
                dim = vectors.shape[1]
                raw.write(vectors.tobytes())
                ids.extend(str(i) for i in batch["id"])
                bar.update(len(vectors))
        if not ids:
            raise CorpusError(f"{', '.join(map(str, paths))}: corpus is empty")
        check_unique_ids(ids, paths)
        n = len(ids)
        with atomic_path(output) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            src = np.memmap(raw_path, dtype=np.float32, mode="r", shape=(n, dim))
            for start in range(0, n, 1 << 16):
                out[start : start + (1 << 16)] = src[start : start + (1 << 16)]
            out.flush()
            del out, src
    finally:
        raw_path.unlink(missing_ok=True)
    ids_path = ids_path_for(output)
    with atomic_open(ids_path, "w") as f:
        json.dump(ids, f, ensure_ascii=False)
    seconds = time.perf_counter() - started
    log.info("encoded %d documents on Ray in %.1fs", len(ids), seconds)
    return {
        "n": len(ids),
        "dim": dim,
        "ids": str(ids_path),
        "workers": actor_plan(options)[0],
        "seconds": seconds,
        "backend": backend,
    }


def check_unique_ids(ids: list[str], paths: Sequence[str | Path]) -> None:
    seen: set[str] = set()
    for doc_id in ids:
        if doc_id in seen:
            raise CorpusError(f"duplicate id {doc_id!r} across the input files {', '.join(map(str, paths))}")
        seen.add(doc_id)
