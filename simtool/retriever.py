"""Search an index directory: a snapshot of one generation, shared safely across threads.

Opening reads the manifest, checks each file's size and header, memory-maps the FAISS
files and opens each segment's SQLite read-only: O(manifest), not O(bytes). Each batch of
queries is one encode, one search per segment and one merge. :meth:`Retriever.refresh`
moves to the newest generation, reopening only the segments that changed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from simtool.config import resolve_index_dir
from simtool.corpus import Document
from simtool.errors import SimtoolError
from simtool.filters import compile_filter, parse_filter
from simtool.index import load_index_encoder, load_reducers, verify_manifest
from simtool.locks import PENDING, ReaderLease
from simtool.manifest import Manifest
from simtool.protocols import Encoder
from simtool.reduce.base import LinearReducer, apply_chain
from simtool.segments import SegmentReader
from simtool.validate import check_k
from simtool.vector_index import MaskedSearcher

Backend = Literal["auto", "faiss", "torch"]
Filter = dict[str, Any] | str | None


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score``: higher is better for every metric (the inner product, or minus the squared L2
    distance). ``distance``: what the metric itself measures (the inner product, or the squared L2).
    """

    rank: int
    id: str
    score: float
    title: str | None
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    distance: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "id": self.id,
            "score": self.score,
            "distance": self.distance,
            "title": self.title,
            "text": self.text,
            "metadata": self.metadata,
        }


def search_json(
    query: str, hits: Sequence[Hit], query_id: str | None = None, backend: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON object of one query's results: what ``simtool search --json`` prints and ``/v1/search`` returns.

    ``backend``: the query encoder's ``{"name", "precision"}``, when the caller reports it (the CLI does).
    """
    obj: dict[str, Any] = {"query": query, "results": [h.to_json() for h in hits]}
    if backend is not None:
        obj["backend"] = backend
    return obj if query_id is None else {"query_id": query_id, **obj}


def _faiss_installed() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss_has_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _default_torch_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``. Without a CUDA driver library there can be no GPU, and that is
    known without importing torch (~1 s), which a search with ``load_model=False`` never needs otherwise."""
    import ctypes.util
    import sys

    if "torch" not in sys.modules and ctypes.util.find_library("cuda") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_backend(manifest: Manifest, backend: Backend, device: str | None) -> tuple[str, str]:
    """``(backend, torch_device)``: faiss when it can serve; torch exact search on CUDA when faiss has no GPU."""
    if backend not in ("auto", "faiss", "torch"):
        raise SimtoolError(f"backend must be auto, faiss or torch, got {backend!r}")
    torch_device = device or _default_torch_device()
    if manifest.long_text.get("mode") == "chunk-max":
        # MaxP maps chunk hits to documents in each segment's FAISS search (SegmentReader.search)
        if backend == "torch":
            raise SimtoolError("backend='torch' does not search chunk-max indexes yet; use backend='faiss' or 'auto'")
        return "faiss", torch_device
    if backend != "auto":
        return backend, torch_device
    if not _faiss_installed():
        return "torch", torch_device
    exact = all(s.factory.replace(" ", "") == "Flat" for s in manifest.segments)
    if exact and torch_device.startswith("cuda") and not _faiss_has_gpu():
        return "torch", torch_device
    return "faiss", torch_device


@dataclass
class _Snapshot:
    """Everything one generation's searches read; never changed once built."""

    manifest: Manifest
    segments: list[SegmentReader]
    reducers: list[LinearReducer]
    torch: _MaskedTorch | None = None  # exact search over every segment's rows, for the torch backend
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))

    @property
    def generation(self) -> int:
        return self.manifest.generation


class Retriever:
    """Encodes queries as the index's documents were encoded and searches one generation of the index."""

    encode_backend: str | None = None  # what load() was asked for; a refresh to a new model reloads with it

    def __init__(
        self,
        index_dir: Path,
        encoder: Encoder | None,
        snapshot: _Snapshot,
        *,
        backend: str,
        torch_device: str,
        search_params: dict[str, int] | None,
        lease: ReaderLease | None,
        gpu: bool,
    ) -> None:
        self.index_dir = index_dir
        self.encoder = encoder
        self._snapshot = snapshot
        self.backend = backend
        self._torch_device = torch_device
        self._search_params = dict(search_params or {})
        self._lease = lease
        self._gpu = gpu
        self._refresh_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        index_dir: str | Path | None = None,
        *,
        device: str | None = None,
        backend: Backend = "auto",
        gpu: bool = True,
        verify: bool = False,
        search_params: dict[str, int] | None = None,
        encoder: Encoder | None = None,
        load_model: bool = True,
        encode_backend: str | None = None,
    ) -> Retriever:
        """Open the newest generation of an index directory.

        ``verify``: also check every file's sha256 (O(bytes); a plain open checks sizes and headers).
        ``search_params`` (e.g. ``{"nprobe": 32, "efSearch": 128}``) override each segment's.
        ``encoder``: an already loaded copy of the index's model (fingerprint-checked) to share.
        ``load_model=False``: no model at all, for callers that search with their own vectors only.
        ``backend`` is the search engine; ``encode_backend`` the query encoder's: ``None`` (the index's own),
        ``auto`` or a name, within the index's tolerance (:mod:`simtool.backends.compat`).
        """
        directory = resolve_index_dir(index_dir)
        Manifest.load(directory)  # a clear error for a missing or old directory before any lease
        lease = _lease(directory)
        try:
            manifest = Manifest.load(directory)
            if verify:
                verify_manifest(directory, manifest)
            chosen, torch_device = choose_backend(manifest, backend, device)
            snapshot = _open_snapshot(directory, manifest, {}, chosen, torch_device)
            if not load_model:
                encoder = None
            elif encoder is None:
                encoder = load_index_encoder(manifest, device, encode_backend)
            else:
                from simtool.index import check_same_model

                check_same_model(manifest, encoder)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if lease is not None:
            lease.hold(manifest.generation)
        retriever = cls(
            directory,
            encoder,
            snapshot,
            backend=chosen,
            torch_device=torch_device,
            search_params=search_params,
            lease=lease,
            gpu=gpu,
        )
        retriever.encode_backend = encode_backend
        return retriever

    # --- snapshot --------------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self._snapshot.manifest

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    def refresh(self) -> int:
        """Move to the newest committed generation; returns it. Searches running meanwhile finish on the old one."""
        with self._refresh_lock:
            if self._lease is not None:
                self._lease.hold(PENDING)
            try:
                manifest = Manifest.load(self.index_dir)
                if manifest.generation != self._snapshot.generation:
                    changed = manifest.model.fingerprint != self._snapshot.manifest.model.fingerprint
                    if changed and self.encoder is not None:
                        self.encoder = load_index_encoder(manifest, self._torch_device, self.encode_backend)
                    reuse = {s.info.name: s for s in self._snapshot.segments}
                    self._snapshot = _open_snapshot(self.index_dir, manifest, reuse, self.backend, self._torch_device)
            finally:
                if self._lease is not None:
                    self._lease.hold(self._snapshot.generation)
            return self._snapshot.generation

    # --- search ----------------------------------------------------------------------------------
    def encode(self, queries: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(len(queries), dim)`` float32 query vectors, exactly as the documents were: encoder, then reducers."""
        from simtool.encoder import encode_texts

        encoder = self._need_model()
        return apply_chain(self._snapshot.reducers, encode_texts(encoder, list(queries), batch_size=batch_size))

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, *, filter: Filter = None
    ) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        """Top-k over the snapshot: ``scores`` ``(nq, k)`` (higher is better, -inf pads) and per query the
        ``(segment, row)`` of each hit."""
        check_k(k)
        return self._search(self._snapshot, vectors, k, filter)

    def search_encoded(self, vectors: np.ndarray, k: int = 10, *, filter: Filter = None) -> list[list[Hit]]:
        """Hits for query vectors already encoded as :meth:`encode` does, ``(nq, dim)`` float32; search and
        document lookup read one snapshot, whatever :meth:`refresh` does meanwhile."""
        check_k(k)
        snap = self._snapshot
        return self._hits(snap, *self._search(snap, vectors, k, filter))

    def _search(
        self, snap: _Snapshot, vectors: np.ndarray, k: int, filter: Filter
    ) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
        parsed = parse_filter(filter)
        sql = compile_filter(parsed) if parsed else None
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        allowed = [seg.allowed(sql) for seg in snap.segments]
        if snap.torch is not None:
            mask = None
            if any(a is not None for a in allowed):
                mask = np.concatenate(
                    [
                        np.ones(s.info.count, bool) if a is None else a
                        for s, a in zip(snap.segments, allowed, strict=True)
                    ]
                )
            d, rows = snap.torch.search(q, k, mask)
            scores = -d if snap.manifest.metric == "l2" else d
            scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
            seg_of = np.searchsorted(snap.offsets, rows, side="right") - 1
            hits = [
                [(int(si), int(r - snap.offsets[si])) for si, r in zip(srow, rrow, strict=True) if r >= 0]
                for srow, rrow in zip(seg_of, rows, strict=True)
            ]
            return scores, hits
        per_scores, per_rows, per_seg = [], [], []
        for si, (seg, allow) in enumerate(zip(snap.segments, allowed, strict=True)):
            params = {**seg.info.search_params, **self._search_params}
            s, r = seg.search(q, k, allow, snap.reducers, params)
            per_scores.append(s)
            per_rows.append(r)
            per_seg.append(np.full(r.shape, si, dtype=np.int64))
        if not per_scores:
            return np.full((len(q), k), -np.inf, np.float32), [[] for _ in range(len(q))]
        s_all = np.concatenate(per_scores, axis=1)
        r_all = np.concatenate(per_rows, axis=1)
        g_all = np.concatenate(per_seg, axis=1)
        top = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(s_all, top, 1)
        rows = np.take_along_axis(r_all, top, 1)
        segs = np.take_along_axis(g_all, top, 1)
        hits = [
            [(int(g), int(r)) for g, r in zip(grow, rrow, strict=True) if r >= 0]
            for grow, rrow in zip(segs, rows, strict=True)
        ]
        return _pad(scores, k), hits

    @overload  # a str is also a Sequence[str]; this overload comes first, so it wins
    def search(self, queries: str, k: int = ..., *, filter: Filter = ...) -> list[Hit]: ...  # type: ignore[overload-overlap]  # str first wins
    @overload
    def search(self, queries: Sequence[str], k: int = ..., *, filter: Filter = ...) -> list[list[Hit]]: ...

    def search(
        self, queries: str | Sequence[str], k: int = 10, *, filter: Filter = None
    ) -> list[Hit] | list[list[Hit]]:
        """Top-k hits for one query (a list of hits) or for a batch (a list per query).

        ``filter``: a metadata filter (see :mod:`simtool.filters`), as a dict or JSON text.
        """
        single = isinstance(queries, str)
        batch = [queries] if isinstance(queries, str) else list(queries)
        check_k(k)
        for i, q in enumerate(batch):
            if not isinstance(q, str) or not q.strip():
                raise SimtoolError(f"query {i + 1} is empty")
        from simtool.encoder import encode_texts

        encoder = self._need_model()
        snap = self._snapshot  # one generation for the whole batch, whatever refresh() does meanwhile
        vectors = apply_chain(snap.reducers, encode_texts(encoder, batch))
        scores, hits = self._search(snap, vectors, k, filter)
        results = self._hits(snap, scores, hits)
        return results[0] if single else results

    def _need_model(self) -> Encoder:
        if self.encoder is None:
            raise SimtoolError("this Retriever was opened with load_model=False: search with vectors instead")
        return self.encoder

    def hits_for(self, scores: np.ndarray, hits: list[list[tuple[int, int]]]) -> list[list[Hit]]:
        """Hits (documents included) for the output of :meth:`search_vectors` on this snapshot."""
        return self._hits(self._snapshot, scores, hits)

    def search_vectors_with_hits(
        self, vectors: np.ndarray, k: int = 10, *, filter: Filter = None
    ) -> tuple[list[list[Hit]], list[np.ndarray]]:
        """Hits for query vectors ``(nq, dim)`` and, per query, the indexed vectors of its hits
        ``(n_hits, dim) float32`` (reducers applied; in a chunk-max index, the best chunk's), all from one
        snapshot whatever refresh() does meanwhile."""
        check_k(k)
        snap = self._snapshot
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        scores, hits = self._search(snap, q, k, filter)
        stored = []
        for qi, row_hits in enumerate(hits):
            block = np.zeros((len(row_hits), snap.manifest.dim), np.float32)
            for j, (g, r) in enumerate(row_hits):
                seg = snap.segments[g]
                rows = apply_chain(snap.reducers, np.asarray(seg.raw[seg.vector_rows(r)], dtype=np.float32))
                if len(rows) > 1:  # the chunk that scored the document
                    s = rows @ q[qi] if snap.manifest.metric == "ip" else -((rows - q[qi]) ** 2).sum(1)
                    best = int(np.argmax(s))
                    rows = rows[best : best + 1]
                block[j] = rows[0]
            stored.append(block)
        return self._hits(snap, scores, hits), stored

    def _hits(self, snap: _Snapshot, scores: np.ndarray, hits: list[list[tuple[int, int]]]) -> list[list[Hit]]:
        wanted: dict[int, set[int]] = {}
        for row_hits in hits:
            for g, r in row_hits:
                wanted.setdefault(g, set()).add(r)
        docs = {g: snap.segments[g].docs(sorted(rows)) for g, rows in wanted.items()}
        l2 = snap.manifest.metric == "l2"
        out = []
        for srow, row_hits in zip(scores, hits, strict=True):
            result = []
            for rank, ((g, r), s) in enumerate(zip(row_hits, srow, strict=False)):
                d: Document = docs[g][r]
                score = float(s)
                result.append(Hit(rank + 1, d.id, score, d.title, d.text, d.metadata, distance=-score if l2 else score))
            out.append(result)
        return out

    # --- documents -------------------------------------------------------------------------------
    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """The given ids that are live in this snapshot."""
        found: set[str] = set()
        for seg in self._snapshot.segments:
            found.update(seg.rows_of(list(ids)))
        return found

    def ids_where(self, filter: Filter) -> list[str]:
        """Every live id whose metadata matches ``filter`` (all live ids for None), exactly, in snapshot order."""
        parsed = parse_filter(filter)
        sql = compile_filter(parsed) if parsed else None
        out: list[str] = []
        for seg in self._snapshot.segments:
            mask = seg.allowed(sql)
            rows = np.arange(seg.info.count) if mask is None else np.flatnonzero(mask)
            docs = seg.docs(rows.tolist())
            out.extend(docs[int(r)].id for r in rows)
        return out

    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        """The live documents with the given ids."""
        out: dict[str, Document] = {}
        for seg in self._snapshot.segments:
            rows = seg.rows_of(list(ids))
            if rows:
                docs = seg.docs(list(rows.values()))
                out.update((i, docs[r]) for i, r in rows.items())
        return out

    def live_vectors(self) -> tuple[np.ndarray, list[str]]:
        """Raw encoder vectors ``(n, d) float32`` of every live document, and their ids, in snapshot order;
        a chunk-max index gives one row per chunk, its document's id repeated."""
        blocks: list[np.ndarray] = []
        ids: list[str] = []
        for seg in self._snapshot.segments:
            rows = np.arange(seg.info.count) if seg.live_mask is None else np.flatnonzero(seg.live_mask)
            docs = seg.docs(rows.tolist())
            if seg.owners is None:
                blocks.append(np.asarray(seg.raw[rows], dtype=np.float32))
                ids.extend(docs[int(r)].id for r in rows)
                continue
            live = np.ones(len(seg.owners), bool) if seg.live_mask is None else seg.live_mask[seg.owners]
            chunks = np.flatnonzero(live)
            blocks.append(np.asarray(seg.raw[chunks], dtype=np.float32))
            ids.extend(docs[int(seg.owners[c])].id for c in chunks)
        dim = self.manifest.model.dim
        return (np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)), ids

    def close(self) -> None:
        for seg in self._snapshot.segments:
            seg.close()
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _pad(scores: np.ndarray, k: int) -> np.ndarray:
    if scores.shape[1] < k:
        scores = np.pad(scores, ((0, 0), (0, k - scores.shape[1])), constant_values=-np.inf)
    return scores.astype(np.float32)


def _lease(directory: Path) -> ReaderLease | None:
    try:
        return ReaderLease(directory)
    except OSError:  # a read-only directory: open descriptors still keep this snapshot readable
        return None


def _open_snapshot(
    directory: Path, manifest: Manifest, reuse: dict[str, SegmentReader], backend: str, torch_device: str
) -> _Snapshot:
    reducers = load_reducers(manifest, directory)
    segments = []
    for info in manifest.segments:
        old = reuse.get(info.name)
        if old is not None and old.info == info:
            segments.append(old)
        else:
            segments.append(SegmentReader(directory, info, manifest.files, manifest.metric, manifest.dim))
    snap = _Snapshot(manifest, segments, reducers)
    if backend == "torch" and manifest.long_text.get("mode") == "chunk-max":  # rebuilt as chunk-max meanwhile
        raise SimtoolError(f"{directory}: a chunk-max index is searched with backend 'faiss', not 'torch'; reopen it")
    if backend == "torch":
        from simtool.vector_index import TorchExactSearcher

        counts = [s.info.count for s in segments]
        snap.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        raw = (
            np.concatenate([np.asarray(s.raw, np.float32) for s in segments])
            if segments
            else np.zeros((0, manifest.model.dim), np.float32)
        )
        vectors = apply_chain(reducers, raw)
        live = (
            np.concatenate([np.ones(s.info.count, bool) if s.live_mask is None else s.live_mask for s in segments])
            if segments
            else None
        )
        snap.torch = _MaskedTorch(TorchExactSearcher(vectors, manifest.metric, torch_device), live)
    return snap


class _MaskedTorch:
    """Torch exact search over all rows, never returning deleted ones."""

    def __init__(self, searcher: MaskedSearcher, live: np.ndarray | None) -> None:
        self.searcher = searcher
        self.live = None if live is None or live.all() else live

    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if mask is None:
            mask = self.live
        return self.searcher.search(q, k, mask)
