"""LangChain adapters (extra ``simtool[langchain]``).

``SimtoolEmbeddings`` encodes with a simtool model, or with an index's model and reducers, so that
LangChain components see the same vectors as ``simtool search``. ``SimtoolVectorStore`` is a
LangChain ``VectorStore`` over a simtool index directory (segments, upsert, delete, filters).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simtool.embedder import Embedder
from simtool.errors import SimtoolError
from simtool.integrations import require
from simtool.integrations.store import ExternalVectorIndex
from simtool.validate import check_batch_size

_lc = require("langchain_core.embeddings", "langchain")
_lc_docs = require("langchain_core.documents", "langchain")
_lc_vs = require("langchain_core.vectorstores", "langchain")
_lc_utils = require("langchain_core.vectorstores.utils", "langchain")

__all__ = ["SimtoolEmbeddings", "SimtoolVectorStore"]


class SimtoolEmbeddings(_lc.Embeddings):  # type: ignore[name-defined]  # the base class comes from an optional extra, loaded at run time
    """LangChain ``Embeddings`` over a simtool encoder.

    Give ``model`` (a directory, a cached hub name; None is all-MiniLM-L6-v2) or ``index_dir``
    (then the index's own model and reducers, whitening or projection, apply exactly as its
    queries are encoded). Vectors are lists of plain Python floats.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        index_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        device: str | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        check_batch_size(batch_size)
        if sum(x is not None for x in (model, index_dir, embedder)) > 1:
            raise SimtoolError("pass at most one of model, index_dir and embedder")
        if embedder is None:
            if index_dir is not None:
                embedder = Embedder.from_index(Path(index_dir), device=device)
            else:
                embedder = Embedder.from_model(model, device=device)
        self.embedder = embedder
        self.batch_size = batch_size

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One batched encode for all texts; ``len(texts)`` lists of ``dim`` floats."""
        return self.embedder.encode(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.encode([text], batch_size=self.batch_size)[0].tolist()


# --- vector store -------------------------------------------------------------------------------------


class SimtoolVectorStore(_lc_vs.VectorStore):  # type: ignore[name-defined]  # the base class comes from an optional extra, loaded at run time
    """A LangChain ``VectorStore`` kept in a simtool index directory (``index_dir``).

    The directory is created by the first add (its dimension is the embedding's) or opened if it
    already holds an index. ``distance``, for a new directory: ``"cosine"`` (vectors are L2-normalised,
    then inner product), ``"ip"`` or ``"l2"`` (squared); an existing index keeps its own. Writes go
    through the index's single writer (one generation per call, durable on return) and the store's
    reader moves to the new generation before the call returns, so a write is visible to the next
    search. Safe to share across threads; the async methods run the sync ones in an executor.
    ``filter=`` takes a dict in simtool's filter language (:mod:`simtool.filters`).
    """

    def __init__(
        self,
        embedding: Any,
        index_dir: str | os.PathLike[str],
        *,
        distance: str = "cosine",
        lock_timeout: float = 30.0,
    ) -> None:
        self._embedding = embedding
        self.store = ExternalVectorIndex(
            index_dir, distance=distance, framework="langchain", embedding=embedding, lock_timeout=lock_timeout
        )

    @property
    def embeddings(self) -> Any:
        return self._embedding

    @property
    def index_dir(self) -> Path:
        return self.store.index_dir

    @property
    def distance(self) -> str:
        return self.store.distance

    def _doc_vectors(self, texts: list[str]) -> np.ndarray:
        """Raw vectors as the index stores them (before its reducers, if any)."""
        emb = self._embedding
        if isinstance(emb, SimtoolEmbeddings) and emb.embedder.reducers:
            from simtool.encoder import encode_texts

            return encode_texts(emb.embedder.encoder, texts, batch_size=emb.batch_size)
        return np.asarray(emb.embed_documents(texts), dtype=np.float32)

    # --- writes ----------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and add texts in one commit; an id already stored is replaced (upsert). Missing ids get uuid4s."""
        from simtool.corpus import Document

        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise SimtoolError(f"metadatas has {len(metadatas)} entries for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise SimtoolError(f"ids has {len(ids)} entries for {len(texts)} texts")
        out = [str(i) if i else str(uuid.uuid4()) for i in (ids or [None] * len(texts))]
        if not texts:
            return out
        metas = [dict(m or {}) for m in (metadatas or [{}] * len(texts))]
        docs = [Document(id=i, text=t, metadata=m) for i, t, m in zip(out, texts, metas, strict=True)]
        self.store.upsert(docs, self._doc_vectors(texts))
        return out

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the given ids (unknown ones are ignored) in one commit."""
        if ids is None:
            raise SimtoolError("delete needs ids; remove the index directory to drop everything")
        self.store.delete(ids)
        return True

    # --- reads -----------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Any]:
        """The stored documents with these ids, in the order given; unknown ids are left out."""
        found = self.store.get(ids)
        return [self._lc_doc(found[i]) for i in ids if i in found]

    @staticmethod
    def _lc_doc(doc: Any) -> Any:
        return _lc_docs.Document(id=doc.id, page_content=doc.text, metadata=doc.metadata)

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Any, float]]:
        """``(document, score)``: cosine similarity / inner product (higher is closer) or squared L2 (lower)."""
        return [(self._lc_doc(h), h.distance) for h, _ in self.store.search(embedding, k, filter)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Any, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Any]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores mapped to [0, 1] (1 = same direction), exact for unit vectors: cosine and simtool's models."""
        if self.distance == "l2":
            return lambda d: 1.0 - math.sqrt(max(d, 0.0)) / math.sqrt(2)
        return lambda s: (1.0 + s) / 2.0

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """MMR over the ``fetch_k`` nearest, with the vectors the index holds (as langchain's in-memory store)."""
        hits = self.store.search(embedding, fetch_k, filter)
        if not hits:
            return []
        query = self.store.query_vector(embedding)[0]
        chosen = _lc_utils.maximal_marginal_relevance(query, [v for _, v in hits], k=k, lambda_mult=lambda_mult)
        return [self._lc_doc(hits[i][0]) for i in chosen]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Any,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        distance: str = "cosine",
        **kwargs: Any,
    ) -> SimtoolVectorStore:
        """A store at ``index_dir`` (created if absent) holding ``texts``."""
        if index_dir is None:
            raise SimtoolError("from_texts needs index_dir, the directory the store lives in")
        store = cls(embedding, index_dir, distance=distance)
        store.add_texts(texts, metadatas, ids=ids)  # type: ignore[arg-type]
        return store

    def refresh(self) -> None:
        """See what other writers (other stores or processes on this directory) committed since; a store
        sees its own writes without this."""
        self.store.refresh()

    def close(self) -> None:
        """Release the reader (its lease on a generation)."""
        self.store.close()
