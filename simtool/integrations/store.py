"""The part of the LangChain and LlamaIndex vector stores that is simtool's own: an index directory
whose vectors an outside embedding model makes, created on the first add, written through the
index's single writer and read through one :class:`~simtool.retriever.Retriever` that moves to each
new generation before a write returns. No third-party import here; each adapter wraps this."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simtool.corpus import Document
from simtool.errors import SimtoolError
from simtool.retriever import Filter, Hit
from simtool.validate import check_k, check_one_of

log = logging.getLogger(__name__)

DISTANCES = ("cosine", "ip", "l2")
EXTERNAL = "external"  # ModelInfo.pooling prefix of an index whose vectors an outside model makes


def external_model(framework: str, embedding: Any, dim: int, distance: str) -> Any:
    """The manifest's record of an outside embedding model; the distance rides along so a reopen searches alike."""
    from simtool.manifest import ModelInfo

    name = framework if embedding is None else f"{framework}:{type(embedding).__name__}"
    return ModelInfo(
        name_or_path=name, fingerprint=f"{name}:{dim}", pooling=f"{EXTERNAL}:{distance}", max_seq_length=None, dim=dim
    )


def distance_of(manifest: Any) -> str:
    pooling = manifest.model.pooling
    if pooling.startswith(f"{EXTERNAL}:"):
        return str(pooling.split(":", 1)[1])
    return "ip" if manifest.metric == "ip" else "l2"


class ExternalVectorIndex:
    """An index directory for vectors made elsewhere; thread-safe.

    ``distance`` applies to a new directory: ``"cosine"`` (vectors L2-normalised, then inner product),
    ``"ip"`` or ``"l2"`` (squared); an existing index keeps its own. ``framework`` and ``embedding``
    only name the model in the manifest.
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        *,
        distance: str = "cosine",
        framework: str = "external",
        embedding: Any = None,
        lock_timeout: float = 30.0,
    ) -> None:
        check_one_of("distance", distance, DISTANCES)
        self.index_dir = Path(index_dir)
        self.distance = distance
        self.framework = framework
        self.embedding = embedding
        self.lock_timeout = lock_timeout
        self._write_lock = threading.Lock()
        self._retriever: Any = None
        self._open()

    def _open(self) -> None:
        from simtool.index import _is_index
        from simtool.retriever import Retriever

        if self._retriever is None and _is_index(self.index_dir):
            self._retriever = Retriever.load(self.index_dir, backend="faiss", gpu=False, load_model=False)
            self.distance = distance_of(self._retriever.manifest)

    @property
    def retriever(self) -> Any:
        """The current reader, or None before the first add created the directory."""
        return self._retriever

    @property
    def raw_dim(self) -> int | None:
        """Dims of what :meth:`upsert` takes (before the index's reducers); None before the first add."""
        return None if self._retriever is None else int(self._retriever.manifest.model.dim)

    def prepare(self, vectors: Any) -> np.ndarray:
        """``(n, d) float32``, L2-normalised for the cosine distance."""
        out = np.asarray(vectors, dtype=np.float32)
        if out.ndim != 2:
            raise SimtoolError(f"the embedding gave vectors of shape {out.shape}, expected (n, dim)")
        if self.distance == "cosine":
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _writer(self) -> Any:
        from simtool.index import Index

        return Index(self.index_dir, lock_timeout=self.lock_timeout, gpu=False)

    # --- writes ----------------------------------------------------------------------------------
    def upsert(self, docs: Sequence[Document], vectors: Any) -> None:
        """Add ``docs`` with their vectors ``(len(docs), d)`` in one commit, replacing live docs of the same id
        (a repeated id within ``docs``: the last one wins). Creates the directory on the first call."""
        from simtool.errors import IndexDirError
        from simtool.index import EncodedPart, _is_index, create_index

        if not docs:
            return
        vecs = self.prepare(vectors)
        if len(vecs) != len(docs):
            raise SimtoolError(f"{len(vecs)} vectors for {len(docs)} documents")
        last = {d.id: i for i, d in enumerate(docs)}
        keep = sorted(last.values())
        with self._write_lock:
            self._open()
            if self._retriever is None:
                metric = "l2" if self.distance == "l2" else "ip"
                model = external_model(self.framework, self.embedding, vecs.shape[1], self.distance)
                try:
                    create_index(self.index_dir, model, metric=metric)
                except IndexDirError:
                    if not _is_index(self.index_dir):
                        raise  # a real problem with the directory, not another writer that created it first
                self._open()
            want = self.raw_dim
            if vecs.shape[1] != want:
                raise SimtoolError(f"embedding has {vecs.shape[1]} dims, the index at {self.index_dir} holds {want}")
            self._writer().append([EncodedPart([docs[i] for i in keep], vecs[keep])], on_duplicate="replace")
            self._retriever.refresh()

    def refresh(self) -> None:
        """See what other writers (other stores, processes, ``simtool index add``) committed since."""
        with self._write_lock:
            self._open()
            if self._retriever is not None:
                self._retriever.refresh()

    def delete(self, ids: Sequence[str]) -> None:
        """Delete these ids (unknown ones are ignored) in one commit."""
        with self._write_lock:
            self._open()
            if self._retriever is None or not ids:
                return
            self._writer().delete([str(i) for i in ids])
            self._retriever.refresh()

    def delete_where(self, filter: Filter) -> int:
        """Delete every document whose metadata matches ``filter``; returns how many."""
        with self._write_lock:
            self._open()
            if self._retriever is None:
                return 0
            ids = self._retriever.ids_where(filter)
            if ids:
                self._writer().delete(ids)
                self._retriever.refresh()
            return len(ids)

    # --- reads -----------------------------------------------------------------------------------
    def get(self, ids: Sequence[str]) -> dict[str, Document]:
        retriever = self._retriever
        return {} if retriever is None else retriever.get([str(i) for i in ids])

    def ids_where(self, filter: Filter) -> list[str]:
        retriever = self._retriever
        return [] if retriever is None else retriever.ids_where(filter)

    def query_vector(self, embedding: Any) -> np.ndarray:
        """``(1, dim)`` float32 query, as the index's vectors (normalised for cosine)."""
        q = self.prepare(np.asarray([embedding], dtype=np.float32))
        retriever = self._retriever
        if retriever is not None and q.shape[1] != retriever.manifest.dim:
            raise SimtoolError(
                f"embedding has {q.shape[1]} dims, the index at {self.index_dir} holds {retriever.manifest.dim}"
            )
        return q

    def search(self, embedding: Any, k: int, filter: Filter = None) -> list[tuple[Hit, np.ndarray]]:
        """Top ``k`` hits for one query vector and the indexed vector of each, from one snapshot.
        ``Hit.distance``: the similarity for cosine/ip (higher is closer), the squared L2 for l2 (lower)."""
        from simtool.filters import parse_filter

        check_k(k)
        parse_filter(filter)  # a bad filter fails even on an empty store
        retriever = self._retriever
        if retriever is None or retriever.manifest.count == 0:
            return []
        hits, stored = retriever.search_vectors_with_hits(self.query_vector(embedding), k, filter=filter)
        return list(zip(hits[0], stored[0], strict=True))

    def close(self) -> None:
        """Release the reader (its lease on a generation)."""
        with self._write_lock:
            if self._retriever is not None:
                self._retriever.close()
                self._retriever = None
