"""Index directories: build, add and inspect.

An index directory holds::

    index.faiss    the FAISS index (CPU layout), row i = document row i
    docs.sqlite    the document store (id, title, text, metadata JSON)
    vectors.npy    the encoder's raw output, (n, d) float32: lets a later step (reducers,
                   another factory) rebuild the index without re-encoding; costs n·d·4 bytes
    manifest.json  how it was made and the sha256 of each file

Every change is made in a staging copy beside the target and swapped in whole, so a
crash at any moment leaves the previous index intact.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sentence_transformers import SentenceTransformer

from simtool._version import __version__
from simtool.atomic import replace_dir, staging_dir_for
from simtool.config import default_index_dir
from simtool.corpus import Document, read_documents, scan_corpus
from simtool.docstore import DocStore
from simtool.encoder import (
    describe_pooling,
    embedding_dim,
    encode_stream,
    load_encoder,
    model_fingerprint,
    progress_bar,
)
from simtool.errors import IndexDirError, SimtoolError
from simtool.manifest import Manifest, ModelInfo
from simtool.reduce.base import LinearReducer, apply_chain, load_reducer
from simtool.vector_index import (
    METRICS,
    choose_factory,
    default_search_params,
    fill_index,
    new_faiss_index,
)

INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.sqlite"
VECTORS_FILE = "vectors.npy"

OnDuplicate = Literal["error", "skip"]


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_faiss(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def _finish(staging: Path, manifest: Manifest, index: Any, target: Path, extra_files: tuple[str, ...] = ()) -> None:
    _write_faiss(index, staging / INDEX_FILE)
    for name in (INDEX_FILE, DOCS_FILE, VECTORS_FILE, *extra_files):
        manifest.record_file(staging, name)
    manifest.save(staging)
    replace_dir(staging, target)


def build_index(
    corpus: str | Path,
    index_dir: str | Path | None = None,
    *,
    model: str | Path | SentenceTransformer | None = None,
    pooling: str | None = None,
    max_seq_length: int | None = None,
    factory: str = "auto",
    metric: str = "ip",
    gpu: bool = True,
    batch_size: int = 64,
    memory_budget: int | None = None,
    fields: CorpusFields = CorpusFields(),
    progress: bool = True,
) -> Manifest:
    """Encode a corpus file and write a new index directory, replacing any previous one atomically.

    The corpus is validated in full before anything is encoded or written.
    """
    target = Path(index_dir) if index_dir is not None else default_index_dir()
    corpus = Path(corpus)
    if metric not in METRICS:
        raise SimtoolError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    n = fields.count(corpus)
    encoder = model if isinstance(model, SentenceTransformer) else load_encoder(model, pooling, None, max_seq_length)
    dim = embedding_dim(encoder)
    spec, factory = factory, choose_factory(n, dim, memory_budget) if factory == "auto" else factory
    index = new_faiss_index(factory, dim, metric)  # an unknown factory fails here, before encoding
    manifest = Manifest(
        model=_model_info(encoder),
        dim=dim,
        metric=metric,
        factory=factory,
        factory_spec=spec,
        count=n,
        search_params=default_search_params(factory),
        created_at=_now(),
        updated_at=_now(),
        simtool_version=__version__,
    )
    staging = staging_dir_for(target)
    try:
        vectors = np.lib.format.open_memmap(staging / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(n, dim))
        with DocStore(staging / DOCS_FILE, readonly=False) as store, progress_bar(n, "encode", progress) as bar:
            encode_stream(encoder, fields.read(corpus), vectors, batch_size=batch_size, bar=bar, on_chunk=store.add)
            store.commit()
        with progress_bar(n, "index", progress) as bar:
            index = fill_index(index, vectors, gpu=gpu, on_progress=bar.update)
        vectors.flush()
        del vectors
        _finish(staging, manifest, index, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _model_info(encoder: SentenceTransformer) -> ModelInfo:
    source = getattr(encoder, "simtool_source", None)
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


def load_index_encoder(manifest: Manifest, device: str | None = None) -> SentenceTransformer:
    """The encoder that built the index, checked against the recorded fingerprint."""
    from simtool.encoder import POOLINGS

    info = manifest.model
    pooling = info.pooling if info.pooling in POOLINGS else None
    encoder = load_encoder(info.name_or_path, pooling, device, info.max_seq_length)
    check_same_model(manifest, encoder)
    return encoder


def check_same_model(manifest: Manifest, encoder: SentenceTransformer) -> None:
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


def read_faiss(manifest: Manifest, directory: Path, *, verify: bool = True) -> Any:
    import faiss

    path = manifest.verify_file(directory, INDEX_FILE) if verify else directory / INDEX_FILE
    try:
        index = faiss.read_index(str(path))
    except RuntimeError:
        raise IndexDirError(f"{path}: unreadable FAISS index; rebuild the index") from None
    if index.d != manifest.dim or index.ntotal != manifest.count:
        raise IndexDirError(
            f"{path}: holds {index.ntotal} vectors of dim {index.d}, "
            f"manifest says {manifest.count} of dim {manifest.dim}"
        )
    return index


def load_reducers(manifest: Manifest, directory: Path, *, verify: bool = True) -> list[LinearReducer]:
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


def _reduced(vectors: np.ndarray, reducers: list[LinearReducer], out: Path) -> np.ndarray:
    """``vectors`` through the chain, written block by block to a scratch memmap at ``out``."""
    if not reducers:
        return vectors
    reduced = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(vectors), reducers[-1].out_dim))
    for start in range(0, len(vectors), 1 << 16):
        reduced[start : start + (1 << 16)] = apply_chain(reducers, vectors[start : start + (1 << 16)])
    return reduced


def _link_or_copy(src: Path, dst: Path) -> None:
    """Committed files are never modified in place, so a hard link is a safe, free copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
    Nothing is re-encoded: the raw vectors come from ``vectors.npy``.
    """
    target = Path(index_dir) if index_dir is not None else default_index_dir()
    manifest = Manifest.load(target)
    if reducer.source_fingerprint != manifest.model.fingerprint:
        raise IndexDirError(
            f"the {reducer.kind} was fitted on vectors of model {reducer.source_fingerprint}, "
            f"not of this index's model {manifest.model.fingerprint}"
        )
    if reducer.in_dim != manifest.model.dim:
        raise IndexDirError(
            f"the {reducer.kind} expects {reducer.in_dim}-dim input, the index's model gives {manifest.model.dim}"
        )
    raw = np.load(manifest.verify_file(target, VECTORS_FILE), mmap_mode="r")
    spec = factory or manifest.factory_spec or manifest.factory
    k = reducer.out_dim
    chosen = choose_factory(manifest.count, k, memory_budget) if spec == "auto" else spec
    index = new_faiss_index(chosen, k, manifest.metric)
    staging = staging_dir_for(target)
    try:
        for name in (DOCS_FILE, VECTORS_FILE):
            _link_or_copy(manifest.verify_file(target, name), staging / name)
        reducer_file = "reducer-0.safetensors"
        reducer.save(staging / reducer_file)
        scratch = staging / "reduced.scratch.npy"
        reduced = _reduced(raw, [reducer], scratch)
        with progress_bar(manifest.count, "index", progress) as bar:
            index = fill_index(index, reduced, gpu=gpu, on_progress=bar.update)
        del reduced
        scratch.unlink()
        manifest.reducers = [{**reducer.config(), "file": reducer_file}]
        manifest.dim, manifest.factory, manifest.factory_spec = k, chosen, spec
        manifest.search_params = default_search_params(chosen)
        manifest.files = {}
        manifest.updated_at = _now()
        _finish(staging, manifest, index, target, extra_files=(reducer_file,))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


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
) -> tuple[Manifest, int, int]:
    """Add a corpus to an existing index; returns ``(manifest, added, skipped)``.

    Ids already in the index are an error (``on_duplicate="error"``, nothing is written)
    or are left as they are (``"skip"``). New documents are encoded with the index's own
    model; ``model``, if given, must be that same model.
    """
    target = Path(index_dir) if index_dir is not None else default_index_dir()
    if on_duplicate not in ("error", "skip"):
        raise SimtoolError(f"--on-duplicate must be 'error' or 'skip', got {on_duplicate!r}")
    manifest = Manifest.load(target)
    corpus = Path(corpus)
    total = fields.count(corpus)
    new_docs = _new_documents(fields, corpus, target, on_duplicate)
    encoder = load_index_encoder(manifest)
    if model is not None:
        check_same_model(manifest, load_encoder(model, None, None, manifest.model.max_seq_length))
    old_n, added = manifest.count, len(new_docs)
    if added == 0:
        return manifest, 0, total
    index = read_faiss(manifest, target)
    reducers = load_reducers(manifest, target)
    old_vectors = np.load(manifest.verify_file(target, VECTORS_FILE), mmap_mode="r")
    staging = staging_dir_for(target)
    try:
        shutil.copy2(manifest.verify_file(target, DOCS_FILE), staging / DOCS_FILE)  # SQLite writes in place
        reducer_files = tuple(entry["file"] for entry in manifest.reducers)
        for name in reducer_files:
            _link_or_copy(target / name, staging / name)
        vectors = np.lib.format.open_memmap(
            staging / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(old_n + added, manifest.model.dim)
        )
        vectors[:old_n] = old_vectors  # numpy copies memmap to memmap in bounded blocks
        with DocStore(staging / DOCS_FILE, readonly=False) as store, progress_bar(added, "encode", progress) as bar:
            encode_stream(encoder, new_docs, vectors, old_n, batch_size=batch_size, bar=bar, on_chunk=store.add)
            store.commit()
        index = fill_index(index, apply_chain(reducers, vectors[old_n:]), gpu=gpu)
        vectors.flush()
        del vectors
        manifest.count = old_n + added
        manifest.updated_at = _now()
        _finish(staging, manifest, index, target, extra_files=reducer_files)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest, added, total - added


def _new_documents(fields: CorpusFields, corpus: Path, target: Path, on_duplicate: OnDuplicate) -> list[Document]:
    docs = list(fields.read(corpus))
    with DocStore(target / DOCS_FILE) as store:
        existing = store.existing_ids([d.id for d in docs])
    if existing and on_duplicate == "error":
        first = next(d.id for d in docs if d.id in existing)
        raise SimtoolError(
            f"{corpus}: {len(existing)} id(s) already in the index (first: {first!r}); "
            "pass --on-duplicate skip to add only new ids"
        )
    return [d for d in docs if d.id not in existing]


def index_info(index_dir: str | Path | None = None, *, verify: bool = True) -> dict[str, Any]:
    """The manifest as a dict, plus the directory, its size on disk and whether checksums verified."""
    target = Path(index_dir) if index_dir is not None else default_index_dir()
    manifest = Manifest.load(target)
    if verify:
        for name in manifest.files:
            manifest.verify_file(target, name)
    info = manifest.to_dict()
    info["index_dir"] = str(target.resolve())
    info["bytes_on_disk"] = sum(f["bytes"] for f in manifest.files.values())
    info["verified"] = verify
    return info
