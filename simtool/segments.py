"""Immutable index segments: one directory of vectors, a FAISS index and document rows.

A segment is written once (:class:`SegmentWriter`) and never modified; deletions are
recorded beside it as tombstone files, each a new file named after the generation that
wrote it. Row ``i`` of a segment is row ``i`` of its ``vectors.npy``, its FAISS index and
its ``docs.sqlite``, except in a ``chunk-max`` index (:mod:`simtool.chunking`), whose segments hold
several vector rows per document row: ``chunks.npy`` names the document row of each vector row
(nondecreasing), and a search returns each document once, scored by its best chunk.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simtool.atomic import fsync_dir
from simtool.corpus import Document
from simtool.docstore import DocStore
from simtool.errors import IndexDirError
from simtool.filters import SqlFilter
from simtool.reduce.base import LinearReducer, apply_chain
from simtool.vector_index import (
    choose_factory,
    default_search_params,
    faiss_metric,
    fill_index,
    new_faiss_index,
    read_faiss,
    training_sample_size,
)

SEGMENTS_DIR = "segments"
VECTORS_FILE = "vectors.npy"
INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.sqlite"
SEGMENT_FILES = (VECTORS_FILE, INDEX_FILE, DOCS_FILE)
IVFDATA_FILE = "index.ivfdata"  # the inverted lists of a segment merged on disk (``SegmentInfo.ondisk``)
CHUNKS_FILE = "chunks.npy"  # chunk-max: (chunks,) int64, the document row of each vector row

# A fixed 128-byte .npy header, so vectors can be streamed to disk before their count is known
# and the header rewritten in place at the end.
_NPY_HEADER = 128
# Below this many allowed rows an approximate segment is searched exactly: faster than a
# filtered graph or list walk, and it always finds k.
EXACT_MAX_ROWS = 20_000

_MAGIC = {
    DOCS_FILE: [b"SQLite format 3\x00"],
    VECTORS_FILE: [b"\x93NUMPY"],
    CHUNKS_FILE: [b"\x93NUMPY"],
    INDEX_FILE: [b"I"],  # every FAISS index fourcc starts with "I" (IxFI, IHNf, IwFl, ...)
}


@dataclass
class SegmentInfo:
    """A segment as the manifest records it. ``deleted`` rows are listed in ``tombstones``."""

    name: str
    count: int
    factory: str
    search_params: dict[str, int] = field(default_factory=dict)
    deleted: int = 0
    tombstones: str | None = None  # file name inside the segment directory
    # the index's trained, empty FAISS index (path relative to the index directory) this segment's
    # FAISS index was filled from, without training; segments sharing one merge their IVF lists
    trained: str | None = None
    ondisk: bool = False  # its IVF lists are in IVFDATA_FILE, memory-mapped
    # chunk-max: the number of vector rows (chunks), mapped to document rows by CHUNKS_FILE;
    # None: one vector row per document row
    chunks: int | None = None

    @property
    def live(self) -> int:
        return self.count - self.deleted

    @property
    def vectors(self) -> int:
        """Rows of its ``vectors.npy`` and FAISS index."""
        return self.count if self.chunks is None else self.chunks

    def file_names(self) -> list[str]:
        """Names of its files inside the segment directory."""
        names = [*SEGMENT_FILES, *([IVFDATA_FILE] if self.ondisk else [])]
        names += [CHUNKS_FILE] if self.chunks is not None else []
        return names + ([self.tombstones] if self.tombstones else [])

    def files(self) -> list[str]:
        """Paths of its files, relative to the index directory."""
        return [f"{SEGMENTS_DIR}/{self.name}/{n}" for n in self.file_names()]


def _npy_header(n: int, dim: int | None, descr: str = "<f4") -> bytes:
    shape = f"({n},)" if dim is None else f"({n}, {dim})"
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    body = text.ljust(_NPY_HEADER - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


class SegmentWriter:
    """Streams documents and their raw vectors into a new segment directory, then builds its FAISS index.

    ``chunked``: a chunk-max segment, whose documents each bring one or more vector rows (``owners``).
    """

    def __init__(self, directory: Path, dim: int, *, chunked: bool = False) -> None:
        self.directory = directory
        self.dim = dim
        directory.mkdir(parents=True)
        self._vectors = open(directory / VECTORS_FILE, "wb")  # noqa: SIM115 - closed in finish()
        self._vectors.write(_npy_header(0, dim))
        self._chunks = open(directory / CHUNKS_FILE, "wb") if chunked else None  # noqa: SIM115 - as above
        if self._chunks is not None:
            self._chunks.write(_npy_header(0, None, "<i8"))
        self._store = DocStore(directory / DOCS_FILE, readonly=False)
        self.count = 0
        self.rows = 0  # vector rows (= count unless chunked)

    def append(self, docs: Sequence[Document], vectors: np.ndarray, owners: np.ndarray | None = None) -> None:
        """Add documents and their raw encoder vectors ``(m, dim) float32``: one per document, or for a
        chunked segment any number, ``owners`` ``(m,)`` naming each one's document (0-based in ``docs``,
        nondecreasing, every document at least once)."""
        if (owners is None) != (self._chunks is None):
            raise IndexDirError("a chunk-max segment takes owners with its vectors; any other segment takes none")
        m = len(docs) if owners is None else len(owners)
        if vectors.shape != (m, self.dim):
            raise IndexDirError(f"expected vectors of shape ({m}, {self.dim}), got {vectors.shape}")
        if owners is not None and self._chunks is not None:
            owners = np.asarray(owners, dtype=np.int64)
            if len(docs) and not np.array_equal(np.unique(owners), np.arange(len(docs))):
                raise IndexDirError(f"owners must name each of the {len(docs)} documents at least once")
            if np.any(owners[1:] < owners[:-1]):
                raise IndexDirError("owners must be nondecreasing (a document's chunks are contiguous)")
            self._chunks.write(np.ascontiguousarray(owners + self.count, dtype="<i8").tobytes())
        self._store.add(docs, self.count)
        self._vectors.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.count += len(docs)
        self.rows += m

    def close_rows(self) -> np.ndarray:
        """Flush the documents and vectors; returns the raw vectors ``(count, dim) float32``, memory-mapped."""
        if self._vectors.closed:
            return np.load(self.directory / VECTORS_FILE, mmap_mode="r")
        self._store.commit()
        self._store.close()
        self._vectors.seek(0)
        self._vectors.write(_npy_header(self.rows, self.dim))
        self._vectors.flush()
        os.fsync(self._vectors.fileno())
        self._vectors.close()
        if self._chunks is not None:
            self._chunks.seek(0)
            self._chunks.write(_npy_header(self.rows, None, "<i8"))
            self._chunks.flush()
            os.fsync(self._chunks.fileno())
            self._chunks.close()
        return np.load(self.directory / VECTORS_FILE, mmap_mode="r")

    def finish(
        self,
        *,
        name: str,
        factory: str,
        metric: str,
        reducers: Sequence[LinearReducer],
        gpu: bool = False,
        trained: tuple[str, Any] | None = None,
        merged: bool = False,
    ) -> SegmentInfo:
        """Write the FAISS index over the reduced vectors and flush everything to disk.

        ``trained``: ``(file, index)``, the index's trained empty FAISS index to fill instead of
        training one. ``merged``: its index is already written here by :func:`merge_inverted_lists`.
        """
        raw = self.close_rows()
        if merged:
            info = SegmentInfo(
                name=name, count=self.count, factory=factory, search_params=default_search_params(factory), ondisk=True
            )
        else:
            info = build_faiss(
                self.directory,
                raw,
                name=name,
                factory=factory,
                metric=metric,
                reducers=reducers,
                gpu=gpu,
                template=None if trained is None else trained[1],
            )
        info.trained = None if trained is None else trained[0]
        info.count = self.count
        info.chunks = None if self._chunks is None else self.rows
        for n in info.file_names():
            with open(self.directory / n, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(self.directory)
        return info

    def abort(self) -> None:
        if not self._vectors.closed:
            self._vectors.close()
            self._store.close()
        if self._chunks is not None and not self._chunks.closed:
            self._chunks.close()


def segment_factory(spec: str, n: int, dim: int, memory_budget: int | None, *, small_ok: bool) -> str:
    """The factory of a segment of ``n`` rows: ``auto`` is decided per segment; a factory that must be
    trained falls back to exact ``Flat`` where the segment is too small to train it (``small_ok``)."""
    if spec == "auto":
        return choose_factory(n, dim, memory_budget)
    if small_ok:
        probe = new_faiss_index(spec, dim, "ip")
        if not probe.is_trained and n < training_sample_size(probe):
            return "Flat"
    return spec


def build_faiss(
    directory: Path,
    raw: np.ndarray,
    *,
    name: str,
    factory: str,
    metric: str,
    reducers: Sequence[LinearReducer],
    gpu: bool = False,
    template: Any = None,
) -> SegmentInfo:
    """Write ``directory/index.faiss`` over ``raw`` ``(n, d)`` passed through ``reducers``;
    ``template``, a trained empty index of ``factory``, is filled instead of training a new one."""
    import faiss

    dim = reducers[-1].out_dim if reducers else raw.shape[1]
    index = new_faiss_index(factory, dim, metric) if template is None else faiss.clone_index(template)
    index = fill_index(index, reduced_view(raw, reducers), gpu=gpu)
    faiss.write_index(index, str(directory / INDEX_FILE))
    return SegmentInfo(name=name, count=len(raw), factory=factory, search_params=default_search_params(factory))


class _Reduced:
    """A lazily reduced view of raw vectors, read in blocks: what ``fill_index`` needs of an array."""

    def __init__(self, raw: Any, reducers: Sequence[LinearReducer]) -> None:
        self.raw, self.reducers = raw, list(reducers)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, item: Any) -> np.ndarray:
        return apply_chain(self.reducers, np.asarray(self.raw[item], dtype=np.float32))


def reduced_view(raw: Any, reducers: Sequence[LinearReducer]) -> Any:
    """``raw`` (n, d) as the FAISS index sees it: through ``reducers``, block by block as it is read."""
    return raw if not reducers else _Reduced(raw, reducers)


class StackedRows:
    """Several ``(n_i, d)`` arrays (memory-mapped segments) read as one, by slice or sorted row numbers,
    without concatenating them: what training on a sample of several new segments needs."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        self.arrays = list(arrays)
        self.starts = np.cumsum([0, *map(len, self.arrays)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, item: Any) -> np.ndarray:
        rows = np.arange(len(self))[item] if isinstance(item, slice) else np.asarray(item)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        return np.concatenate(
            [np.asarray(a[rows[which == j] - self.starts[j]], dtype=np.float32) for j, a in enumerate(self.arrays)]
        )


def check_file(path: Path, expected_bytes: int) -> None:
    """The cheap checks of a plain open: present, of the recorded size, with the right header."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise IndexDirError(f"{path}: missing from the index directory; run `simtool index verify`") from None
    if size != expected_bytes:
        raise IndexDirError(
            f"{path}: {size} bytes, the manifest records {expected_bytes}: truncated or replaced; "
            "restore it or rebuild the index"
        )
    magics = _MAGIC.get(path.name)
    if magics:
        with open(path, "rb") as f:
            head = f.read(16)
        if not any(head.startswith(m) for m in magics):
            raise IndexDirError(f"{path}: bad file header, the file is corrupted; rebuild the index")


class SegmentReader:
    """An open segment: FAISS index (memory-mapped where the type allows), documents, live rows.

    Safe to share across threads: FAISS searches are read-only and the SQLite connection is
    used under a lock.
    """

    def __init__(self, root: Path, info: SegmentInfo, files: dict[str, dict[str, Any]], metric: str, dim: int) -> None:

        self.info = info
        self.metric = metric
        self.directory = root / SEGMENTS_DIR / info.name
        for rel in info.files():
            if rel not in files:
                raise IndexDirError(f"{root / 'manifest.json'}: no size or checksum recorded for {rel}")
            check_file(root / rel, files[rel]["bytes"])
        path = self.directory / INDEX_FILE
        try:
            self.index = read_faiss(path, ondisk=info.ondisk)
        except RuntimeError:
            raise IndexDirError(f"{path}: unreadable FAISS index; run `simtool index verify`") from None
        if self.index.ntotal != info.vectors or self.index.d != dim:
            raise IndexDirError(
                f"{path}: holds {self.index.ntotal} vectors of dim {self.index.d}, "
                f"the manifest says {info.vectors} of dim {dim}"
            )
        # chunk-max: the document row of each vector row (checked in full by `simtool index verify`)
        self.owners: np.ndarray | None = None
        if info.chunks is not None:
            self.owners = load_chunk_owners(self.directory / CHUNKS_FILE, info.chunks)
        self._store = DocStore(self.directory / DOCS_FILE, shared=True)
        self._store_lock = threading.Lock()
        self.raw = np.load(self.directory / VECTORS_FILE, mmap_mode="r")
        self.live_mask: np.ndarray | None = None
        if info.tombstones:
            dead = load_tombstones(self.directory / info.tombstones, info.count)
            self.live_mask = np.ones(info.count, dtype=bool)
            self.live_mask[dead] = False
        self._selector_ok = True
        self._faiss_metric = faiss_metric(metric)

    # --- documents -------------------------------------------------------------------------------
    def docs(self, rows: Sequence[int]) -> dict[int, Document]:
        with self._store_lock:
            return self._store.get_rows(rows)

    def rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """Live rows of the given ids: ``{id: row}``."""
        with self._store_lock:
            found = self._store.rows_of(ids)
        if self.live_mask is not None:
            found = {i: r for i, r in found.items() if self.live_mask[r]}
        return found

    def allowed(self, filter: SqlFilter | None) -> np.ndarray | None:
        """Rows a search may return: ``(count,)`` bool, or None for all of them."""
        if filter is None:
            return self.live_mask
        with self._store_lock:
            rows = self._store.filter_rows(filter)
        mask = np.zeros(self.info.count, dtype=bool)
        mask[rows] = True
        if self.live_mask is not None:
            mask &= self.live_mask
        return mask

    def vector_rows(self, row: int) -> slice:
        """The vector rows of document row ``row``: itself, or in a chunk-max segment its chunks."""
        if self.owners is None:
            return slice(row, row + 1)
        lo, hi = np.searchsorted(self.owners, [row, row + 1])
        return slice(int(lo), int(hi))

    def close(self) -> None:
        with self._store_lock:
            self._store.close()

    # --- search ----------------------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        reducers: Sequence[LinearReducer],
        params: dict[str, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of this segment over allowed document rows: ``(scores, rows)`` ``(nq, k)``, higher is
        better, row -1 pads. A chunk-max segment scores each document by its best chunk (MaxP)."""
        if self.owners is None:
            return self._search_rows(queries, k, allowed, reducers, params)
        return self._search_chunks(queries, k, allowed, reducers, params)

    def _search_chunks(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        reducers: Sequence[LinearReducer],
        params: dict[str, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """MaxP over the chunk rows: fetch more chunks than ``k``, keep each document's first (best) hit
        (:func:`simtool.chunking.dedupe_chunk_hits`), and double the fetch for queries still short of
        ``k`` documents until the allowed chunks are exhausted."""
        from simtool.chunking import dedupe_chunk_hits

        owners = self.owners
        assert owners is not None
        n_docs = self.info.count if allowed is None else int(allowed.sum())
        out_s, out_r = _empty(len(queries), k)
        want = min(k, n_docs)
        if want == 0:
            return out_s, out_r
        chunk_allowed = None if allowed is None else allowed[owners]
        n_chunks = len(owners) if chunk_allowed is None else int(chunk_allowed.sum())
        per_doc = -(-len(owners) // max(self.info.count, 1))  # mean chunks per document, rounded up
        fetch = min(n_chunks, 2 * k * per_doc)
        todo = np.arange(len(queries))
        while len(todo):
            s, r = self._search_rows(queries[todo], fetch, chunk_allowed, reducers, params)
            short = []
            for j, qi in enumerate(todo):
                doc_s, doc_r = dedupe_chunk_hits(s[j], r[j], owners, k)
                out_s[qi, : len(doc_r)], out_r[qi, : len(doc_r)] = doc_s, doc_r
                if len(doc_r) < want:
                    short.append(qi)
            if fetch >= n_chunks:
                break
            todo, fetch = np.asarray(short, dtype=np.int64), min(n_chunks, 2 * fetch)
        return out_s, out_r

    def _search_rows(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        reducers: Sequence[LinearReducer],
        params: dict[str, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k vector rows over allowed ones (``(vectors,)`` bool or None)."""
        n_allowed = self.info.vectors if allowed is None else int(allowed.sum())
        if n_allowed == 0:
            return _empty(len(queries), k)
        exact = self.info.factory.replace(" ", "") == "Flat"
        if allowed is not None and not exact and n_allowed <= EXACT_MAX_ROWS:
            return self.exact(queries, k, np.flatnonzero(allowed), reducers)
        scores, rows = self._faiss_search(queries, k, allowed, n_allowed, params)
        if allowed is None:  # unfiltered: FAISS's own answer, short lists included, as a bare index gives
            return scores, rows
        want = min(k, n_allowed)
        short = (rows >= 0).sum(axis=1) < want
        if short.any():  # a filtered graph or list walk ran dry: finish those queries exactly
            s, r = self.exact(queries[short], k, np.flatnonzero(allowed), reducers)
            scores[short], rows[short] = s, r
        return scores, rows

    def _faiss_search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None, n_allowed: int, params: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(k, self.info.vectors)
        if allowed is None or self._selector_ok:
            sel_params = _search_parameters(self.index, params, allowed)
            try:
                d, i = self.index.search(q, kk, params=sel_params)
                return _pad(self._to_scores(d, i), i, k)
            except RuntimeError:  # this index type takes no selector (e.g. IndexPQ)
                self._selector_ok = False
        # Over-fetch past every excluded row, then drop them.
        excluded = self.info.vectors - n_allowed
        fetch = min(self.info.vectors, kk + excluded)
        d, i = self.index.search(q, fetch, params=_search_parameters(self.index, params, None))
        assert allowed is not None
        ok = (i >= 0) & allowed[np.clip(i, 0, None)]
        s = self._to_scores(d, i)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :kk]
        s, i = np.take_along_axis(s, order, 1), np.take_along_axis(np.where(ok, i, -1), order, 1)
        return _pad(s, i, k)

    def _to_scores(self, d: np.ndarray, i: np.ndarray) -> np.ndarray:
        s = -d if self.metric == "l2" else d.copy()
        s[i < 0] = -np.inf
        return s.astype(np.float32)

    def exact(
        self, queries: np.ndarray, k: int, candidates: np.ndarray, reducers: Sequence[LinearReducer]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over ``candidates`` (local rows) from the raw vectors, in float32 like FAISS Flat."""
        q = np.asarray(queries, dtype=np.float32)
        best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_r = np.zeros((len(q), 0), dtype=np.int64)
        for start in range(0, len(candidates), 65_536):
            rows = candidates[start : start + 65_536]
            x = apply_chain(reducers, np.asarray(self.raw[rows], dtype=np.float32))
            s = q @ x.T
            if self.metric == "l2":
                s = -((q * q).sum(1, keepdims=True) - 2 * s + (x * x).sum(1)[None, :])
            s_all = np.concatenate([best_s, s], axis=1)
            r_all = np.concatenate([best_r, np.broadcast_to(rows, s.shape)], axis=1)
            top = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
            best_s, best_r = np.take_along_axis(s_all, top, 1), np.take_along_axis(r_all, top, 1)
        return _pad(best_s.astype(np.float32), best_r, k)


def _empty(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if rows.shape[1] < k:
        pad = ((0, 0), (0, k - rows.shape[1]))
        scores = np.pad(scores, pad, constant_values=-np.inf)
        rows = np.pad(rows, pad, constant_values=-1)
    return scores, rows.astype(np.int64)


def _search_parameters(index: Any, params: dict[str, int], allowed: np.ndarray | None) -> Any:
    """FAISS per-call parameters: the segment's nprobe / efSearch, plus a bitmap selector of allowed rows."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        p: Any = faiss.SearchParametersIVF()  # Any: _keep below is our attribute, not faiss's
        p.nprobe = params.get("nprobe", ivf.nprobe)
    elif "HNSW" in type(index).__name__:
        p = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's __init__.pyi
        hnsw = faiss.downcast_index(index).hnsw  # type: ignore[attr-defined]  # the stub types it as Index
        p.efSearch = params.get("efSearch", hnsw.efSearch)
    else:
        p = faiss.SearchParameters()
    if allowed is not None:
        bitmap = np.packbits(allowed, bitorder="little")
        p.sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        p._keep = (bitmap, p.sel)  # the selector reads the bitmap; keep both alive with the params
    return p


def load_chunk_owners(path: Path, chunks: int) -> np.ndarray:
    """A chunk-max segment's ``(chunks,) int64`` document row of each vector row, memory-mapped.

    Its header is checked here (dtype, shape); its bytes by sha256 in ``simtool index verify``."""
    try:
        owners = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        raise IndexDirError(f"{path}: unreadable chunk map; run `simtool index verify`") from None
    if owners.dtype != np.int64 or owners.shape != (chunks,):
        raise IndexDirError(f"{path}: malformed chunk map ({owners.dtype} {owners.shape}, expected int64 ({chunks},))")
    return owners


def load_tombstones(path: Path, count: int) -> np.ndarray:
    """Deleted rows of a segment: ``(m,) int64``, sorted, each in ``[0, count)``."""
    try:
        dead = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        raise IndexDirError(f"{path}: unreadable tombstone file; run `simtool index verify`") from None
    if dead.ndim != 1 or dead.dtype != np.int64 or (len(dead) and (dead.min() < 0 or dead.max() >= count)):
        raise IndexDirError(f"{path}: malformed tombstone file")
    return dead


def write_tombstones(path: Path, rows: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.unique(rows).astype(np.int64), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
