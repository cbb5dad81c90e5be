"""Index directories: immutable segments plus an atomic commit point.

Layout (format 2)::

    manifest.json                       the commit point: the newest generation (see manifest.py)
    commits/0000000007.json             a copy of each generation an open reader may still hold
    segments/<name>/vectors.npy         the encoder's raw output, (n, d) float32
    segments/<name>/index.faiss         FAISS index over the (reduced) vectors, row i = vector i
    segments/<name>/docs.sqlite         id, title, text, metadata JSON of each row
    segments/<name>/tombstones-<g>.npy  rows deleted as of generation g (a new file per change)
    segments/<name>/index.ivfdata       the inverted lists of a segment merged on disk (IVF only)
    segments/<name>/chunks.npy          chunk-max only: the document row of each vector row, (chunks,) int64
    reducers/<kind>-<g>.safetensors     the reducer chain queries and documents go through
    trained/<g>-<hex>.faiss             the trained, empty FAISS index new segments are filled from
    write.lock, readers/*.lease         flock locks: one writer; which generations readers hold

A write (add, delete, upsert, compact) takes the writer lock, writes only new files, and
publishes a new generation by renaming a new ``manifest.json`` over the old one; a crash at
any point leaves the previous generation, and files of an unfinished write are removed by
the next writer (which then checks every file's sha256). Nothing already committed is ever
rewritten, so an add costs O(batch) and readers read without locks.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import itertools
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simtool._version import __version__
from simtool.atomic import atomic_dir, fsync_dir, publish_new_dir
from simtool.config import resolve_index_dir
from simtool.corpus import Document, read_documents, scan_corpus
from simtool.docstore import DocStore
from simtool.errors import IndexDirError, SimtoolError
from simtool.locks import WriterLock, held_generations
from simtool.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelInfo,
    commit_path,
    committed_generations,
    sha256_file,
)
from simtool.protocols import Encoder, encoder_info
from simtool.reduce.base import LinearReducer, load_reducer
from simtool.segments import (
    CHUNKS_FILE,
    DOCS_FILE,
    INDEX_FILE,
    SEGMENTS_DIR,
    VECTORS_FILE,
    SegmentInfo,
    SegmentWriter,
    StackedRows,
    load_chunk_owners,
    load_tombstones,
    reduced_view,
    segment_factory,
    write_tombstones,
)
from simtool.validate import check_metric, check_one_of, check_positive
from simtool.vector_index import (
    choose_factory,
    default_search_params,
    fill_index,
    is_ivf,
    merge_inverted_lists,
    needs_training,
    new_faiss_index,
    read_faiss,
    trained_index,
)

log = logging.getLogger(__name__)

REDUCERS_DIR = "reducers"
TRAINED_DIR = "trained"
OnDuplicate = Literal["error", "skip", "replace"]
ON_DUPLICATE = ("error", "skip", "replace")


class DuplicateIdError(SimtoolError):
    """A write with ``on_duplicate="error"`` named ids that are already live."""


MERGE_FACTOR = 10  # segments of one size tier merged together; see merge_plan

__all__ = [
    "DOCS_FILE",
    "INDEX_FILE",
    "VECTORS_FILE",
    "CorpusFields",
    "DuplicateIdError",
    "EncodedPart",
    "Index",
    "WriteResult",
    "add_to_index",
    "build_index",
    "collect_garbage",
    "create_index",
    "encode_parts",
    "index_info",
    "live_vectors",
    "merge_plan",
    "reduce_index",
    "upgrade_index",
    "verify_index",
]


@dataclass(frozen=True)
class CorpusFields:
    """Which fields of a corpus row hold the text, id and title (``None``: the format's default)."""

    text: str | None = None
    id: str | None = None
    title: str | None = None

    def read(self, path: Path) -> Iterator[Document]:
        return read_documents(path, text_field=self.text, id_field=self.id, title_field=self.title)

    def count(self, path: Path) -> int:
        return scan_corpus(path, text_field=self.text, id_field=self.id, title_field=self.title)


@dataclass(frozen=True)
class EncodedPart:
    """Documents and their raw encoder vectors ``(len(docs), d) float32``: the unit a build stage produces.

    For a ``chunk-max`` index, ``vectors`` has one row per chunk and ``owners`` ``(len(vectors),) int64``
    names each row's document (0-based in ``docs``, nondecreasing, every document at least once), as
    :func:`encode_parts` makes them; ``owners`` is None for every other index.

    Parts can be encoded anywhere (threads, processes, a Ray cluster) and committed together by
    :meth:`Index.append`.
    """

    docs: list[Document]
    vectors: np.ndarray
    owners: np.ndarray | None = None

    def split(self, n: int) -> tuple[EncodedPart, EncodedPart]:
        """The first ``n`` documents with their vectors, and the rest."""
        if self.owners is None:
            return EncodedPart(self.docs[:n], self.vectors[:n]), EncodedPart(self.docs[n:], self.vectors[n:])
        cut = int(np.searchsorted(self.owners, n))
        return (
            EncodedPart(self.docs[:n], self.vectors[:cut], self.owners[:cut]),
            EncodedPart(self.docs[n:], self.vectors[cut:], self.owners[cut:] - n),
        )

    def keep(self, rows: Sequence[int] | np.ndarray) -> EncodedPart:
        """The documents at ``rows`` (ascending positions in ``docs``) with their vectors."""
        rows = np.asarray(rows, dtype=np.int64)
        docs = [self.docs[int(i)] for i in rows]
        if self.owners is None:
            return EncodedPart(docs, self.vectors[rows])
        position = np.full(len(self.docs), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        kept = position[self.owners] >= 0
        return EncodedPart(docs, self.vectors[kept], position[self.owners[kept]])


@dataclass
class WriteResult:
    """What a write did; ``generation`` is the one it published (unchanged if nothing changed)."""

    generation: int
    added: int = 0
    deleted: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)
    merged: int = 0  # segments merged by the automatic policy


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def encode_parts(
    encoder: Encoder,
    docs: Iterable[Document],
    *,
    batch_size: int = 64,
    bar: Any = None,
    long_text: dict[str, Any] | None = None,
) -> Iterator[EncodedPart]:
    """Encode documents (``Document.encoded_text``) in chunks of a few thousand.

    ``long_text``: a manifest's ``long_text`` record (:func:`simtool.chunking.index_long_text`); empty truncates.
    ``chunk-max`` parts carry one vector per token window and its ``owners``.
    """
    from simtool.chunking import encode_chunked
    from simtool.encoder import batched_documents

    spec = long_text or {}
    mode = spec.get("mode", "truncate")
    for chunk in batched_documents(docs):
        enc = encode_chunked(
            encoder,
            [d.encoded_text for d in chunk],
            mode=mode,
            chunk_tokens=spec.get("chunk_tokens"),
            chunk_overlap=spec.get("chunk_overlap", 0),
            batch_size=batch_size,
        )
        if bar is not None:
            bar.update(len(chunk))
        yield EncodedPart(chunk, enc.vectors, enc.owners if mode == "chunk-max" else None)


# --- model and reducers recorded in a manifest -------------------------------------------------------


def model_info(encoder: Encoder) -> ModelInfo:
    """What a manifest records of a model loaded by :func:`simtool.encoder.load_encoder`."""
    from simtool.encoder import describe_pooling, embedding_dim, model_fingerprint

    source = encoder_info(encoder).source
    if source is None:
        raise SimtoolError("pass a model loaded with simtool.load_encoder so the index can record where it came from")
    path = Path(source).expanduser()
    return ModelInfo(
        name_or_path=str(path.resolve()) if path.exists() else source,
        fingerprint=model_fingerprint(encoder),
        pooling=describe_pooling(encoder),
        max_seq_length=encoder.max_seq_length,
        dim=embedding_dim(encoder),
    )


def load_index_encoder(manifest: Manifest, device: str | None = None, backend: str | None = None) -> Encoder:
    """The encoder that built the index, checked against the recorded fingerprint.

    ``backend``: ``None`` (the index's own), ``auto`` or a name, within the index's tolerance
    (:mod:`simtool.backends.compat`).
    """
    from simtool.backends import compat
    from simtool.encoder import POOLINGS, default_device, load_encoder, resolve_model_path

    info = manifest.model
    pooling = info.pooling if info.pooling in POOLINGS else None
    device = device or default_device()
    model_dir = resolve_model_path(info.name_or_path) if backend == "auto" else None
    chosen = compat.resolve(manifest.backend, backend, device=device, model_dir=model_dir)
    encoder = load_encoder(info.name_or_path, pooling, device, info.max_seq_length, backend=chosen)
    check_same_model(manifest, encoder)
    return encoder


def check_same_model(manifest: Manifest, encoder: Encoder) -> None:
    from simtool.backends import compat
    from simtool.encoder import embedding_dim, model_fingerprint

    info = manifest.model
    dim = embedding_dim(encoder)
    if dim != info.dim:
        raise IndexDirError(f"the index was built from {info.dim}-dim vectors but the model gives {dim} dims")
    fingerprint = model_fingerprint(encoder)
    if fingerprint != info.fingerprint:
        raise IndexDirError(
            f"the index was built by model {info.name_or_path} (fingerprint {info.fingerprint}), "
            f"but this model has fingerprint {fingerprint}; rebuild the index with this model"
        )
    compat.check_loaded(manifest.backend, encoder, fingerprint)


def load_reducers(manifest: Manifest, directory: Path, *, verify: bool = False) -> list[LinearReducer]:
    """The index's reducer chain, checked: fitted on this model's vectors, dims that chain up."""
    reducers = []
    dim = manifest.model.dim
    for entry in manifest.reducers:
        path = manifest.verify_file(directory, entry["file"]) if verify else directory / entry["file"]
        reducer = load_reducer(path)
        if reducer.source_fingerprint != manifest.model.fingerprint:
            raise IndexDirError(
                f"{path}: this {reducer.kind} was fitted on vectors of model {reducer.source_fingerprint}, "
                f"not of the index's model {manifest.model.fingerprint}"
            )
        if reducer.in_dim != dim:
            raise IndexDirError(f"{path}: expects {reducer.in_dim}-dim input, gets {dim}")
        reducers.append(reducer)
        dim = reducer.out_dim
    if dim != manifest.dim:
        raise IndexDirError(f"{directory}: reducers output {dim} dims, the index holds {manifest.dim}")
    return reducers


# --- the writer ---------------------------------------------------------------------------------------


class Index:
    """The writing side of an index directory. Every method that changes it publishes one generation.

    ``lock_timeout``: seconds to wait for another writer before failing with its pid.
    ``auto_merge``: apply :func:`merge_plan` (with ``merge_factor``) after each write.
    ``encoder``: an already loaded copy of the index's model, to skip loading it.
    ``backend``: the encode backend for new documents: ``None`` (the index's own), ``auto`` or a name,
    within the index's tolerance (:mod:`simtool.backends.compat`).
    """

    backend: str | None = None

    def __init__(
        self,
        index_dir: str | Path | None = None,
        *,
        lock_timeout: float = 30.0,
        gpu: bool = True,
        memory_budget: int | None = None,
        auto_merge: bool = True,
        merge_factor: int = MERGE_FACTOR,
        encoder: Encoder | None = None,
        backend: str | None = None,
    ) -> None:
        self.directory = resolve_index_dir(index_dir)
        manifest = Manifest.load(self.directory)  # fail now on a missing or foreign directory
        from simtool.backends import compat

        compat.refuse_past(manifest.backend, backend)  # ... and on a backend past its tolerance
        self.backend = backend
        self.lock_timeout = lock_timeout
        self.gpu = gpu
        self.memory_budget = memory_budget
        self.auto_merge = auto_merge
        self.merge_factor = merge_factor
        self._encoder = encoder

    @property
    def manifest(self) -> Manifest:
        """The newest committed generation."""
        return Manifest.load(self.directory)

    @property
    def generation(self) -> int:
        return self.manifest.generation

    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_index_encoder(self.manifest, backend=self.backend)
        return self._encoder

    # --- public writes ---------------------------------------------------------------------------
    def add(self, docs: Iterable[Document], *, on_duplicate: OnDuplicate = "error", batch_size: int = 64) -> int:
        """Encode and add documents; returns the new generation. An id already live is an error unless
        ``on_duplicate`` is ``"skip"`` (keep the old one) or ``"replace"`` (upsert)."""
        return self.write(docs, on_duplicate=on_duplicate, batch_size=batch_size).generation

    def upsert(self, docs: Iterable[Document], *, batch_size: int = 64) -> int:
        """Add documents, replacing any live document with the same id, in one commit."""
        return self.write(docs, on_duplicate="replace", batch_size=batch_size).generation

    def delete(self, ids: Iterable[str]) -> int:
        """Tombstone the given ids (unknown ones are ignored); returns the new generation."""
        return self.write((), delete=ids).generation

    def write(
        self,
        docs: Iterable[Document] = (),
        *,
        delete: Iterable[str] = (),
        on_duplicate: OnDuplicate = "error",
        batch_size: int = 64,
        progress: bool = False,
        source: str = "documents",
        vectors: np.ndarray | None = None,
        segment_rows: int | None = None,
    ) -> WriteResult:
        """Add ``docs`` and delete ``delete`` ids in one commit. ``source`` names the input in errors.

        ``vectors``: the docs' raw encoder vectors ``(len(docs), d) float32``, encoded elsewhere by this
        index's model (as :meth:`append` takes them), so the writer lock is not held during an encode.
        """
        from simtool.encoder import progress_bar

        docs = list(docs)
        _check_batch(docs, source)
        if vectors is not None and len(vectors) != len(docs):
            raise SimtoolError(f"vectors has {len(vectors)} rows for {len(docs)} documents")
        if vectors is not None and docs and _chunked(self.manifest):
            raise SimtoolError(
                "vectors: a chunk-max index holds one vector per chunk; pass the documents alone to be encoded, "
                "or EncodedParts with owners to append()"
            )
        check_one_of("on_duplicate", on_duplicate, ON_DUPLICATE)
        with self._transaction() as tx:
            existing = tx.lookup([d.id for d in docs])
            if existing and on_duplicate == "error":
                first = next(d.id for d in docs if d.id in existing)
                raise DuplicateIdError(
                    f"{source}: {len(existing)} id(s) already in the index (first: {first!r}); "
                    "pass on_duplicate='skip' to keep them or on_duplicate='replace' to upsert"
                )
            skipped = 0
            if on_duplicate == "skip":
                skipped = len(existing)
                if vectors is not None:
                    vectors = _without(EncodedPart(docs, vectors), existing).vectors
                docs = [d for d in docs if d.id not in existing]
            delete = [str(i) for i in delete]
            doomed = {**tx.lookup(delete), **(existing if on_duplicate == "replace" else {})}
            missing = [i for i in delete if i not in doomed]
            tx.tombstone(doomed)
            if docs and vectors is not None:
                tx.add_parts([EncodedPart(docs, np.asarray(vectors, dtype=np.float32))], segment_rows=segment_rows)
            elif docs:
                with progress_bar(len(docs), "encode", progress) as bar:
                    parts = encode_parts(
                        self.encoder(), docs, batch_size=batch_size, bar=bar, long_text=tx.base.long_text
                    )
                    tx.add_parts(parts, segment_rows=segment_rows)
            result = WriteResult(
                tx.base.generation, added=len(docs), deleted=len(doomed), skipped=skipped, missing=missing
            )
        result.generation = tx.published
        result.merged = self._maybe_merge()
        return result

    def append(
        self,
        parts: Iterable[EncodedPart],
        *,
        on_duplicate: OnDuplicate = "error",
        segment_rows: int | None = None,
        source: str = "parts",
    ) -> int:
        """Commit parts encoded elsewhere (by this index's model) as one generation; returns it.

        Parts stream to disk as they come, into segments of at most ``segment_rows`` rows. Ids must
        be unique across the parts (a duplicate fails the whole write, naming ``source``).
        """
        check_one_of("on_duplicate", on_duplicate, ON_DUPLICATE)
        with self._transaction() as tx:

            def checked() -> Iterator[EncodedPart]:
                for part in unique_ids(parts, source):
                    existing = tx.lookup([d.id for d in part.docs])
                    if existing and on_duplicate == "error":
                        first = next(d.id for d in part.docs if d.id in existing)
                        raise DuplicateIdError(f"{source}: id {first!r} is already in the index")
                    if on_duplicate == "skip":
                        part = _without(part, existing)
                    elif on_duplicate == "replace":
                        tx.tombstone(existing)
                    yield part

            tx.add_parts(checked(), segment_rows=segment_rows)
        self._maybe_merge()
        return tx.published

    def compact(
        self,
        *,
        factory: str | None = None,
        reducers: Sequence[LinearReducer] | None = None,
        retrain: bool = False,
        progress: bool = False,
    ) -> int:
        """Merge every segment into one without its deleted rows; readers keep searching meanwhile.

        An IVF index merges its segments' inverted lists on disk, re-encoding only rows not yet coded
        with its trained quantizer; any other index, and one given ``retrain``, a new ``factory``
        or new ``reducers``, is re-indexed (and retrained) from the raw vectors.
        """
        with self._transaction() as tx:
            everything = tx.base.segments
            tx.merge(everything, factory=factory, reducers=reducers, progress=progress, whole=True, retrain=retrain)
        return tx.published

    # --- machinery -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Transaction]:
        with WriterLock(self.directory, self.lock_timeout):
            base = Manifest.load(self.directory)
            collect_garbage(self.directory, base, recovering=True)
            tx = _Transaction(self, base)
            try:
                yield tx
            except BaseException:
                tx.rollback()
                raise
            tx.commit()
            collect_garbage(self.directory, tx.result if tx.changed else base)

    def _maybe_merge(self) -> int:
        if not self.auto_merge:
            return 0
        merged = 0
        while True:
            with self._transaction() as tx:
                groups = merge_plan(tx.base.segments, self.merge_factor)
                if not groups:
                    return merged
                tx.merge(groups[0])
                merged += len(groups[0])


def merge_plan(segments: Sequence[SegmentInfo], factor: int = MERGE_FACTOR) -> list[list[SegmentInfo]]:
    """The automatic merge policy (tiered, as Lucene's): segments are grouped into size tiers by
    ``floor(log10(live rows))``; a tier holding ``factor`` or more segments is merged into one, which
    then belongs to a higher tier. So at most ``factor - 1`` segments live in each tier (about
    ``(factor - 1) * log10(n)`` in all) and each document is rewritten once per tier it climbs,
    ``log10(n)`` times over its life. A segment more than half deleted is rewritten on its own."""
    tiers: dict[int, list[SegmentInfo]] = {}
    groups = []
    for seg in segments:
        if seg.deleted * 2 > seg.count:
            groups.append([seg])
            continue
        tiers.setdefault(int(np.log10(max(seg.live, 1))), []).append(seg)
    groups += [group for _, group in sorted(tiers.items()) if len(group) >= factor]
    return groups


class _Transaction:
    """One generation being written under the writer lock: new files only, then one commit."""

    def __init__(self, index: Index, base: Manifest) -> None:
        self.index = index
        self.base = base
        self.result = copy.deepcopy(base)
        self.result.generation = base.generation + 1
        self.directory = index.directory
        self.new_dirs: list[Path] = []
        self.new_files: list[Path] = []
        self.changed = False
        self.published = base.generation
        self._reducers: list[LinearReducer] | None = None
        self._trained: tuple[str, Any] | None = None

    def reducers(self) -> list[LinearReducer]:
        if self._reducers is None:
            self._reducers = load_reducers(self.result, self.directory)
        return self._reducers

    def lookup(self, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``{id: (segment, row)}`` of the given ids live in this transaction's state."""
        found: dict[str, tuple[str, int]] = {}
        if not ids:
            return found
        for seg in self.result.segments:
            seg_dir = self.directory / SEGMENTS_DIR / seg.name
            with DocStore(seg_dir / DOCS_FILE) as store:
                rows = store.rows_of(ids)
            if seg.tombstones and rows:
                dead = set(load_tombstones(seg_dir / seg.tombstones, seg.count).tolist())
                rows = {i: r for i, r in rows.items() if r not in dead}
            found.update((i, (seg.name, r)) for i, r in rows.items())
        return found

    def tombstone(self, doomed: dict[str, tuple[str, int]]) -> None:
        by_segment: dict[str, list[int]] = {}
        for name, row in doomed.values():
            by_segment.setdefault(name, []).append(row)
        kept = []
        for seg in self.result.segments:
            rows = by_segment.get(seg.name)
            if rows:
                seg_dir = self.directory / SEGMENTS_DIR / seg.name
                old = load_tombstones(seg_dir / seg.tombstones, seg.count) if seg.tombstones else np.zeros(0, np.int64)
                dead = np.union1d(old, np.asarray(rows, dtype=np.int64))
                if seg.tombstones:
                    self.result.files.pop(f"{SEGMENTS_DIR}/{seg.name}/{seg.tombstones}", None)
                seg.deleted = len(dead)
                if seg.live == 0:
                    for rel in seg.files():
                        self.result.files.pop(rel, None)
                    self.changed = True
                    continue
                seg.tombstones = f"tombstones-{self.result.generation:010d}.npy"
                path = seg_dir / seg.tombstones
                write_tombstones(path, dead)
                self.new_files.append(path)
                self._record(seg_dir / seg.tombstones)
                self.changed = True
            kept.append(seg)
        self.result.segments = kept
        self.result.count -= len(doomed)

    def _new_segment(self) -> tuple[str, Path]:
        name = f"{self.result.generation:010d}-{secrets.token_hex(3)}"
        path = self.directory / SEGMENTS_DIR / name
        self.new_dirs.append(path)
        return name, path

    def _record(self, path: Path) -> None:
        rel = path.relative_to(self.directory).as_posix()
        self.result.files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}

    def add_parts(self, parts: Iterable[EncodedPart], *, build: bool = False, segment_rows: int | None = None) -> None:
        """Write the parts as new segments of at most ``segment_rows`` rows each (default: one segment).

        Rows stream to disk; the FAISS indexes are built once every row is there, so a factory that
        must be trained is trained once, on a seeded sample of all the new rows, and the segments are
        filled from it. ``build``: every segment takes the index's factory (``auto`` decided on the
        total), as a fresh build must; otherwise each segment's is decided by its size.
        """
        if segment_rows is not None:
            check_positive("segment_rows", segment_rows)
        chunked = _chunked(self.result)
        writers: list[tuple[str, SegmentWriter]] = []
        try:
            for part in parts:
                if (part.owners is not None) != chunked:
                    raise SimtoolError(
                        "parts: a chunk-max index takes EncodedParts with owners (the document of each chunk "
                        "vector), as encode_parts(long_text=manifest.long_text) makes them"
                        if chunked
                        else f"parts: EncodedParts with owners are for a chunk-max index; this one is "
                        f"{self.result.long_text.get('mode', 'truncate')}"
                    )
                while part.docs:
                    if not writers or (segment_rows is not None and writers[-1][1].count >= segment_rows):
                        name, path = self._new_segment()
                        writers.append((name, SegmentWriter(path, self.result.model.dim, chunked=chunked)))
                    room = len(part.docs) if segment_rows is None else segment_rows - writers[-1][1].count
                    head, part = part.split(room)
                    writers[-1][1].append(head.docs, head.vectors, head.owners)
            raws = [writer.close_rows() for _, writer in writers]
            if build and (self.result.factory_spec or self.result.factory) == "auto":
                self._set_factory(choose_factory(sum(map(len, raws)), self.result.dim, self.index.memory_budget))
            factories = [self._segment_factory(len(raw), build) for raw in raws]
            main = [raw for raw, f in zip(raws, factories, strict=True) if f == self.result.factory]
            trained = self.trained() or (self._train(StackedRows(main)) if main else None)
            for (name, writer), factory in zip(writers, factories, strict=True):
                info = writer.finish(
                    name=name,
                    factory=factory,
                    metric=self.result.metric,
                    reducers=self.reducers(),
                    gpu=self.index.gpu,
                    trained=trained if factory == self.result.factory else None,
                )
                self._add_segment(info)
        except BaseException:
            for _, writer in writers:
                writer.abort()
            raise

    def _segment_factory(self, n: int, build: bool) -> str:
        # small segments of a later write are exact Flat even where a template could fill them:
        # a few hundred rows in IVF lists would make nprobe-limited searches miss most of them
        if build:
            return self.result.factory
        return segment_factory(
            self.result.factory_spec or self.result.factory, n, self.result.dim, self.index.memory_budget, small_ok=True
        )

    # --- the trained, empty FAISS index of the index's factory -----------------------------------
    def trained(self) -> tuple[str, Any] | None:
        """``(file, index)`` of the index's trained template, or None (none yet, or none needed)."""
        entry = self.result.trained
        if not entry:
            return None
        if self._trained is None or self._trained[0] != entry["file"]:
            self._trained = (entry["file"], read_faiss(self.directory / entry["file"]))
        return self._trained

    def _train(self, raw: Any) -> tuple[str, Any] | None:
        """Train the index's factory on a seeded sample of ``raw`` (n, d) float32 and keep it as the
        template; None when the factory needs no training."""
        import faiss

        factory, dim = self.result.factory, self.result.dim
        if not needs_training(factory, dim):
            return None
        index = trained_index(factory, dim, self.result.metric, reduced_view(raw, self.reducers()), gpu=self.index.gpu)
        rel = f"{TRAINED_DIR}/{self.result.generation:010d}-{secrets.token_hex(3)}.faiss"
        path = self.directory / rel
        path.parent.mkdir(exist_ok=True)
        faiss.write_index(index, str(path))
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        self.new_files.append(path)
        self._record(path)
        self._drop_trained()
        self.result.trained = {"file": rel, "factory": factory}
        self._trained = (rel, index)
        return self._trained

    def _drop_trained(self) -> None:
        """The template no longer fits (new factory or reducers): the next segment of the factory trains one."""
        if self.result.trained:
            self.result.files.pop(self.result.trained["file"], None)
        self.result.trained = {}
        self._trained = None

    def _set_factory(self, factory: str) -> None:
        if factory != self.result.factory:
            self._drop_trained()
        self.result.factory = factory
        self.result.search_params = default_search_params(factory)

    def _add_segment(self, info: SegmentInfo) -> None:
        for rel in info.files():
            self._record(self.directory / rel)
        self.result.segments.append(info)
        self.result.count += info.live
        self.changed = True

    def merge(
        self,
        group: Sequence[SegmentInfo],
        *,
        factory: str | None = None,
        reducers: Sequence[LinearReducer] | None = None,
        progress: bool = False,
        whole: bool = False,
        retrain: bool = False,
    ) -> bool:
        """Replace ``group`` by one segment of its live rows (``whole``: the index's every segment).

        Where the index has a trained IVF template and every row is to be indexed by it, the
        segments' inverted lists are merged on disk (:func:`merge_inverted_lists`), re-encoding
        only rows of segments not filled from that template; otherwise the merged segment is
        indexed afresh (``retrain``: the template is retrained too). Returns whether lists were merged.
        """
        from simtool.encoder import progress_bar

        names = {s.name for s in group}
        if reducers is not None:
            self._set_reducers(list(reducers))
        if retrain:
            self._drop_trained()
        if factory is not None:
            self.result.factory_spec = factory
            if factory == "auto":
                every = sum(_live_vector_rows(self.directory, s) for s in self.result.segments)
                factory = choose_factory(every, self.result.dim, self.index.memory_budget)
            self._set_factory(factory)
        live = sum(s.live for s in group)
        if live == 0:
            return False
        if whole:
            spec = self.result.factory_spec or self.result.factory
            n = sum(_live_vector_rows(self.directory, s) for s in group)  # "auto" decides on vectors, as a build
            self._set_factory(segment_factory(spec, n, self.result.dim, self.index.memory_budget, small_ok=False))
        name, path = self._new_segment()
        writer = SegmentWriter(path, self.result.model.dim, chunked=_chunked(self.result))
        rows: list[int] = []  # vector rows each segment of the group brings
        try:
            with progress_bar(live, "compact", progress) as bar:
                for seg in group:
                    before = writer.rows
                    for part in _live_rows(self.directory, seg):
                        writer.append(part.docs, part.vectors, part.owners)
                        bar.update(len(part.docs))
                    rows.append(writer.rows - before)
            raw = writer.close_rows()
            chosen = self._segment_factory(len(raw), whole)
            trained = self.trained() if chosen == self.result.factory else None
            merged = False
            if trained is not None and is_ivf(trained[1]):
                merge_inverted_lists(trained[1], self._shards(group, rows, raw, trained), path / INDEX_FILE)
                merged = True
            elif trained is None and chosen == self.result.factory:
                trained = self._train(raw)
            info = writer.finish(
                name=name,
                factory=chosen,
                metric=self.result.metric,
                reducers=self.reducers(),
                gpu=self.index.gpu,
                trained=trained,
                merged=merged,
            )
        except BaseException:
            writer.abort()
            raise
        for seg in group:
            for rel in seg.files():
                self.result.files.pop(rel, None)
        self.result.segments = [s for s in self.result.segments if s.name not in names]
        self.result.count -= live
        self._add_segment(info)
        return merged

    def _shards(
        self, group: Sequence[SegmentInfo], rows: Sequence[int], raw: np.ndarray, trained: tuple[str, Any]
    ) -> list[Any]:
        """Each segment of ``group`` as an IVF index of its live rows (``rows[i]`` of ``raw`` each, in order):
        its own FAISS index where that was filled from ``trained`` and has no deletions, else ``trained``
        filled with its rows of ``raw``."""
        import faiss

        shards, start = [], 0
        for seg, n in zip(group, rows, strict=True):
            if seg.trained == trained[0] and not seg.deleted:
                shards.append(read_faiss(self.directory / SEGMENTS_DIR / seg.name / INDEX_FILE, ondisk=seg.ondisk))
            else:
                rows_of_seg = reduced_view(raw[start : start + n], self.reducers())
                shards.append(fill_index(faiss.clone_index(trained[1]), rows_of_seg))
            start += n
        return shards

    def _set_reducers(self, reducers: list[LinearReducer]) -> None:
        self._drop_trained()
        for entry in self.result.reducers:
            self.result.files.pop(entry["file"], None)
        entries = []
        (self.directory / REDUCERS_DIR).mkdir(exist_ok=True)
        for i, reducer in enumerate(reducers):
            rel = f"{REDUCERS_DIR}/{reducer.kind}-{self.result.generation:010d}-{i}.safetensors"
            reducer.save(self.directory / rel)
            self.new_files.append(self.directory / rel)
            self._record(self.directory / rel)
            entries.append({**reducer.config(), "file": rel})
        self.result.reducers = entries
        self.result.dim = reducers[-1].out_dim if reducers else self.result.model.dim
        self._reducers = reducers

    def commit(self) -> None:
        if not self.changed:
            self.rollback()
            return
        self.result.updated_at = _now()
        self.result.simtool_version = __version__
        for path in {*(p.parent for p in self.new_files), *(d.parent for d in self.new_dirs)}:
            fsync_dir(path)
        self.result.save(self.directory)
        self.published = self.result.generation

    def rollback(self) -> None:
        for path in self.new_dirs:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.new_files:
            path.unlink(missing_ok=True)


def _without(part: EncodedPart, drop: dict[str, Any]) -> EncodedPart:
    return part.keep([i for i, d in enumerate(part.docs) if d.id not in drop])


def _chunked(manifest: Manifest) -> bool:
    """Whether the index stores one vector per chunk (``long_text`` chunk-max)."""
    return manifest.long_text.get("mode") == "chunk-max"


def unique_ids(parts: Iterable[EncodedPart], source: str) -> Iterator[EncodedPart]:
    """The parts as they come, each checked to hold Documents with ids not seen before in the stream;
    a duplicate raises naming ``source`` and the id. Holds the ids, never the vectors."""
    seen: set[str] = set()
    for part in parts:
        for i, d in enumerate(part.docs):
            if not isinstance(d, Document):
                raise SimtoolError(f"{source}: item {i} of a part is a {type(d).__name__}, expected a simtool Document")
            if d.id in seen:
                raise DuplicateIdError(f"duplicate id {d.id!r} in {source}")
            seen.add(d.id)
        yield part


def _check_batch(docs: Sequence[Document], source: str) -> None:
    seen: set[str] = set()
    for i, d in enumerate(docs):
        if not isinstance(d, Document):
            raise SimtoolError(f"{source}: item {i} is a {type(d).__name__}, expected a simtool Document")
        if d.id in seen:
            raise SimtoolError(f"{source}: duplicate id {d.id!r}")
        seen.add(d.id)


def _live_vector_rows(directory: Path, seg: SegmentInfo) -> int:
    """Vector rows of a segment's live documents (its live documents, unless it is chunk-max)."""
    if seg.chunks is None:
        return seg.live
    if not seg.tombstones:
        return seg.chunks
    seg_dir = directory / SEGMENTS_DIR / seg.name
    dead = load_tombstones(seg_dir / seg.tombstones, seg.count)
    return seg.chunks - int(np.isin(load_chunk_owners(seg_dir / CHUNKS_FILE, seg.chunks), dead).sum())


def _live_rows(directory: Path, seg: SegmentInfo, block: int = 65_536) -> Iterator[EncodedPart]:
    """A segment's live documents and raw vectors, in row order, in blocks of about ``block`` vector rows
    (a chunk-max segment's parts carry their owners)."""
    seg_dir = directory / SEGMENTS_DIR / seg.name
    raw = np.load(seg_dir / VECTORS_FILE, mmap_mode="r")
    owners = None if seg.chunks is None else load_chunk_owners(seg_dir / CHUNKS_FILE, seg.chunks)
    live = np.ones(seg.count, dtype=bool)
    if seg.tombstones:
        live[load_tombstones(seg_dir / seg.tombstones, seg.count)] = False
    docs_per_block = max(1, block * seg.count // max(seg.vectors, 1))
    with DocStore(seg_dir / DOCS_FILE) as store:
        for start in range(0, seg.count, docs_per_block):
            stop = min(seg.count, start + docs_per_block)
            keep = np.flatnonzero(live[start:stop])
            if len(keep) == 0:
                continue
            docs = store.iter_rows(start, stop)
            if owners is None:
                yield EncodedPart([docs[i] for i in keep], np.asarray(raw[start + keep], dtype=np.float32))
                continue
            lo, hi = np.searchsorted(owners, [start, stop])
            part = EncodedPart(docs, np.asarray(raw[lo:hi], dtype=np.float32), np.asarray(owners[lo:hi]) - start)
            yield part.keep(keep)


# --- garbage collection and recovery ------------------------------------------------------------------


def collect_garbage(directory: Path, current: Manifest, *, recovering: bool = False) -> None:
    """Delete what no generation still needs. Call under the writer lock.

    Kept: the current generation and every generation an open reader's lease names (a lease not
    yet naming one keeps every committed generation). Anything under ``segments/``, ``reducers/``
    or ``commits/`` that no committed generation refers to is left by an interrupted write: it is
    removed, and then (``recovering``) every file of the current generation is checked by sha256.
    """
    leases = held_generations(directory)
    generations = committed_generations(directory)
    keep = {current.generation} | set(leases.generations)
    if leases.pending:
        keep |= {g for g in generations if g <= current.generation}
    needed: set[str] = set(current.files)
    known: set[str] = set(current.files)
    for g in generations:
        if g == current.generation:
            continue
        if g > current.generation:  # written by a write that never published
            commit_path(directory, g).unlink(missing_ok=True)
            continue
        try:
            files = set(Manifest.load_commit(directory, g).files)
        except (OSError, ValueError, KeyError, TypeError):
            files = set()
        known |= files
        if g in keep:
            needed |= files
    orphans = False
    for top in (SEGMENTS_DIR, REDUCERS_DIR, TRAINED_DIR):
        root = directory / top
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), reverse=True):
            rel = path.relative_to(directory).as_posix()
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()  # only when empty
                continue
            if rel in needed:
                continue
            if rel not in known:
                orphans = True
            path.unlink(missing_ok=True)
    for g in generations:
        if g < current.generation and g not in keep:
            commit_path(directory, g).unlink(missing_ok=True)
    if orphans and recovering:
        log.warning("%s: removed the files of an interrupted write; checking every file", directory)
        verify_manifest(directory, current)


def verify_manifest(directory: Path, manifest: Manifest) -> list[str]:
    """Check the size and sha256 of every file of a generation; raises naming the first bad one."""
    for rel in sorted(manifest.files):
        manifest.verify_file(directory, rel)
    return sorted(manifest.files)


def verify_index(index_dir: str | Path | None = None) -> dict[str, Any]:
    """``simtool index verify``: every file of the newest generation, by sha256."""
    directory = resolve_index_dir(index_dir)
    manifest = Manifest.load(directory)
    files = verify_manifest(directory, manifest)
    for seg in manifest.segments:
        from simtool.segments import SegmentReader

        SegmentReader(directory, seg, manifest.files, manifest.metric, manifest.dim).close()
    return {"index_dir": str(directory.resolve()), "generation": manifest.generation, "files": len(files), "ok": True}


# --- whole-index operations ------------------------------------------------------------------------------


def build_index(
    corpus: str | Path | Iterable[Document] | Iterable[EncodedPart],
    index_dir: str | Path | None = None,
    *,
    model: str | os.PathLike[str] | Encoder | None = None,
    pooling: str | None = None,
    max_seq_length: int | None = None,
    factory: str = "auto",
    metric: str = "ip",
    gpu: bool = True,
    batch_size: int = 64,
    memory_budget: int | None = None,
    fields: CorpusFields = CorpusFields(),
    progress: bool = True,
    long_text: str = "truncate",
    chunk_tokens: int | None = None,
    chunk_overlap: int = 32,
    backend: str = "torch",
    segment_rows: int | None = None,
) -> Manifest:
    """Encode a corpus (a file, any iterable of Documents, or EncodedParts already encoded by ``model``)
    into a new index.

    ``backend``: the encode backend when ``model`` is a name or path (:func:`simtool.load_encoder`);
    the manifest records the one that encoded (a loaded ``model`` brings its own).

    ``long_text``: ``truncate``, ``chunk-mean`` (one vector per document, the mean of its token
    windows) or ``chunk-max`` (one vector per window; a search scores each document by its best
    window and returns it once; see :mod:`simtool.chunking`), recorded in the manifest so later adds
    encode alike. EncodedParts for a chunk-max build carry ``owners``.
    EncodedParts are streamed to disk as they come (an iterator of them is never held in memory),
    into segments of at most ``segment_rows`` rows; ids must be unique across all of them.

    A new directory appears whole, by one rename. An existing index gets a new generation
    holding only the new segment, so its open readers keep their snapshot. A corpus file is
    validated in full before anything is encoded or written.
    """
    from simtool.backends import backend_info
    from simtool.chunking import index_long_text
    from simtool.encoder import embedding_dim, load_encoder, progress_bar

    target = resolve_index_dir(index_dir)
    check_metric(metric)
    parts: Iterator[EncodedPart] | None = None
    docs: Iterable[Document] = ()
    n: int | None = None
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        n = fields.count(path)
        docs = fields.read(path)
    else:
        items: Iterator[Any] = iter(corpus)
        first = next(items, None)
        if isinstance(first, EncodedPart):
            parts = unique_ids(itertools.chain([first], items), "parts")
        else:
            listed: list[Any] = [] if first is None else [first, *items]
            _check_batch(listed, "documents")
            docs, n = listed, len(listed)
            if n == 0:
                raise SimtoolError("documents: nothing to index")
    if model is None or isinstance(model, (str, os.PathLike)):
        encoder: Encoder = load_encoder(model, pooling, None, max_seq_length, backend=backend)
    else:
        encoder = model
    spec = index_long_text(encoder, long_text, chunk_tokens, chunk_overlap)
    dim = embedding_dim(encoder)
    chosen = choose_factory(n or 0, dim, memory_budget) if factory == "auto" else factory
    new_faiss_index(chosen, dim, metric)  # an unknown factory fails here, before encoding
    manifest = Manifest(
        model=model_info(encoder),
        dim=dim,
        metric=metric,
        factory=chosen,
        factory_spec=factory,
        count=0,
        search_params=default_search_params(chosen),
        created_at=_now(),
        updated_at=_now(),
        simtool_version=__version__,
        long_text=spec,
        backend=backend_info(encoder),
    )

    def write_into(directory: Path, base: Manifest) -> Manifest:
        index = Index.__new__(Index)
        index.directory, index.gpu, index.memory_budget = directory, gpu, memory_budget
        index.lock_timeout, index.auto_merge, index._encoder = 30.0, False, encoder
        index.merge_factor = MERGE_FACTOR
        tx = _Transaction(index, base)
        tx.result = copy.deepcopy(manifest)
        tx.result.generation = base.generation + 1
        tx.result.created_at = base.created_at or manifest.created_at
        try:
            with progress_bar(n or 0, "encode", progress) as bar:
                stream = (
                    parts
                    if parts is not None
                    else encode_parts(encoder, docs, batch_size=batch_size, bar=bar, long_text=spec)
                )
                tx.add_parts(stream, build=True, segment_rows=segment_rows)
            if not tx.result.segments:
                raise SimtoolError("parts: nothing to index")
        except BaseException:
            tx.rollback()
            raise
        tx.commit()
        return tx.result

    if _is_index(target):
        with WriterLock(target):
            base = Manifest.load(target)
            collect_garbage(target, base, recovering=True)
            result = write_into(target, base)
            collect_garbage(target, result)
        return result
    with atomic_dir(target) as staging:
        result = write_into(staging, copy.deepcopy(manifest))
    return result


def create_index(index_dir: str | Path, model: ModelInfo, *, metric: str = "ip", factory: str = "auto") -> Manifest:
    """A new index with no documents, for vectors that an outside encoder (``model`` describes it) makes
    and :meth:`Index.append` adds. The directory appears whole, by one rename; an existing index is an error."""
    target = Path(index_dir)
    check_metric(metric)
    check_positive("model.dim", model.dim)
    if _is_index(target):
        raise IndexDirError(f"{target}: already an index")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise IndexDirError(f"{target}: exists and is not an empty directory; pick a new index_dir")
    chosen = choose_factory(0, model.dim, None) if factory == "auto" else factory
    new_faiss_index(chosen, model.dim, metric)  # an unknown factory fails here
    manifest = Manifest(
        model=model,
        dim=model.dim,
        metric=metric,
        factory=chosen,
        factory_spec=factory,
        count=0,
        search_params=default_search_params(chosen),
        generation=1,
        created_at=_now(),
        updated_at=_now(),
        simtool_version=__version__,
    )
    try:
        # a plain rename, not replace_dir: it fails when another process published an index here meanwhile,
        # where an exchange would silently throw that index away
        with atomic_dir(target, publish=publish_new_dir) as staging:
            manifest.save(staging)
    except OSError:
        if _is_index(target):
            raise IndexDirError(f"{target}: already an index (created meanwhile by another writer)") from None
        raise
    return manifest


def _is_index(directory: Path) -> bool:
    """A format-2 index (format 1 and foreign directories are replaced whole by a build)."""
    try:
        Manifest.load(directory)
    except IndexDirError:
        return False
    return True


def add_to_index(
    corpus: str | Path,
    index_dir: str | Path | None = None,
    *,
    model: str | Path | None = None,
    on_duplicate: OnDuplicate = "error",
    gpu: bool = True,
    batch_size: int = 64,
    fields: CorpusFields = CorpusFields(),
    progress: bool = True,
    lock_timeout: float = 30.0,
    backend: str | None = None,
    long_text: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
) -> tuple[Manifest, int, int]:
    """Add a corpus file to an existing index; returns ``(manifest, added, skipped)``.

    New documents are encoded with the index's own model; ``model``, if given, must be that same
    model. ``on_duplicate``: ``"error"`` (nothing is written), ``"skip"`` or ``"replace"`` (upsert).
    ``backend``: as :class:`Index` takes it. ``long_text``, ``chunk_tokens``, ``chunk_overlap``: None
    (the index's own, as its manifest records them) or the same values; others are refused.
    """
    from simtool.chunking import check_index_long_text
    from simtool.encoder import load_encoder

    check_one_of("on_duplicate", on_duplicate, ON_DUPLICATE)
    path = Path(corpus)
    fields.count(path)
    index = Index(index_dir, gpu=gpu, lock_timeout=lock_timeout, backend=backend)
    check_index_long_text(index.manifest.long_text, long_text, chunk_tokens, chunk_overlap)
    if model is not None:
        check_same_model(index.manifest, load_encoder(model, None, None, index.manifest.model.max_seq_length))
    result = index.write(
        fields.read(path), on_duplicate=on_duplicate, batch_size=batch_size, progress=progress, source=str(path)
    )
    return index.manifest, result.added, result.skipped


def reduce_index(
    reducer: LinearReducer,
    index_dir: str | Path | None = None,
    *,
    factory: str | None = None,
    gpu: bool = True,
    memory_budget: int | None = None,
    progress: bool = True,
) -> Manifest:
    """Rebuild an index with its raw vectors passed through ``reducer`` (replacing earlier reducers).

    ``factory``: None reuses what the index was built with ("auto" is re-decided for the new dim).
    Nothing is re-encoded: the raw vectors come from each segment's ``vectors.npy``.
    """
    index = Index(index_dir, gpu=gpu, memory_budget=memory_budget)
    manifest = index.manifest
    if reducer.source_fingerprint != manifest.model.fingerprint:
        raise IndexDirError(
            f"the {reducer.kind} was fitted on vectors of model {reducer.source_fingerprint}, "
            f"not of this index's model {manifest.model.fingerprint}"
        )
    if reducer.in_dim != manifest.model.dim:
        raise IndexDirError(
            f"the {reducer.kind} expects {reducer.in_dim}-dim input, the index's model gives {manifest.model.dim}"
        )
    index.compact(factory=factory or manifest.factory_spec or manifest.factory, reducers=[reducer], progress=progress)
    return index.manifest


def live_vectors(index_dir: str | Path | None = None) -> np.ndarray:
    """The raw encoder vectors of every live document of the newest generation, ``(n, d) float32``
    (memory-mapped when the index is one segment without deletions); a chunk-max index gives one row
    per live chunk."""
    directory = resolve_index_dir(index_dir)
    manifest = Manifest.load(directory)
    segs = manifest.segments
    if len(segs) == 1 and not segs[0].deleted:
        return np.load(directory / SEGMENTS_DIR / segs[0].name / VECTORS_FILE, mmap_mode="r")
    blocks = [part.vectors for seg in segs for part in _live_rows(directory, seg)]
    return np.concatenate(blocks) if blocks else np.zeros((0, manifest.model.dim), np.float32)


def index_info(
    index_dir: str | Path | None = None, *, verify: bool = False, backend: str | None = None
) -> dict[str, Any]:
    """The manifest as a dict, plus the directory, its size on disk and whether checksums were verified.

    ``"backend"``: the build backend; ``"backend_check"``: what encoding for this index with ``backend``
    (``None``: the index's own; ``auto``; a name) would do here (:func:`simtool.backends.compat.check`).
    """
    from simtool.backends import compat

    directory = resolve_index_dir(index_dir)
    manifest = Manifest.load(directory)
    if verify:
        verify_manifest(directory, manifest)
    info = manifest.to_dict()
    info["index_dir"] = str(directory.resolve())
    info["bytes_on_disk"] = sum(f["bytes"] for f in manifest.files.values())
    info["verified"] = verify
    info["deleted"] = sum(s.deleted for s in manifest.segments)
    info["backend"] = compat.recorded_backend(manifest.backend)
    info["backend_check"] = compat.describe(manifest.backend, backend, manifest.model.name_or_path)
    return info


# --- format 1 -------------------------------------------------------------------------------------------


def upgrade_index(index_dir: str | Path | None = None) -> Manifest:
    """Convert a format-1 directory (one FAISS file) in place: its files become the one segment of
    generation 1 (hard links, no copy), published by one rename of ``manifest.json``."""
    import json

    directory = resolve_index_dir(index_dir)
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise IndexDirError(f"{directory}: no readable {MANIFEST_NAME}; not a simtool index") from None
    if data.get("format_version") == 2:
        return Manifest.load(directory)
    if data.get("format_version") != 1:
        raise IndexDirError(f"{path}: format version {data.get('format_version')} cannot be upgraded")
    old_files = data.get("files", {})
    old_names = [INDEX_FILE, DOCS_FILE, VECTORS_FILE, *(e["file"] for e in data.get("reducers", []))]
    with WriterLock(directory):
        for name in old_names:
            exp = old_files.get(name)
            if exp is None or not (directory / name).is_file() or sha256_file(directory / name) != exp["sha256"]:
                raise IndexDirError(f"{directory / name}: missing or corrupted; rebuild the index instead")
        name = f"{1:010d}-{secrets.token_hex(3)}"
        seg_dir = directory / SEGMENTS_DIR / name
        shutil.rmtree(directory / SEGMENTS_DIR, ignore_errors=True)  # a previous upgrade that was cut short
        seg_dir.mkdir(parents=True)
        for f in (INDEX_FILE, DOCS_FILE, VECTORS_FILE):
            os.link(directory / f, seg_dir / f)
        reducers = []
        (directory / REDUCERS_DIR).mkdir(exist_ok=True)
        files: dict[str, dict[str, Any]] = {}
        for entry in data.get("reducers", []):
            rel = f"{REDUCERS_DIR}/{entry['file']}"
            os.link(directory / entry["file"], directory / rel)
            reducers.append({**entry, "file": rel})
            files[rel] = old_files[entry["file"]]
        seg = SegmentInfo(name=name, count=data["count"], factory=data["factory"], search_params=data["search_params"])
        for f in (INDEX_FILE, DOCS_FILE, VECTORS_FILE):
            files[f"{SEGMENTS_DIR}/{name}/{f}"] = old_files[f]
        data.update(format_version=2, generation=1, segments=[seg.__dict__], files=files, reducers=reducers)
        manifest = Manifest.from_dict(data)
        fsync_dir(seg_dir)
        manifest.save(directory)
        for f in old_names:
            (directory / f).unlink(missing_ok=True)
        fsync_dir(directory)
    return manifest
