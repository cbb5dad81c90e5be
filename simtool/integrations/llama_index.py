"""LlamaIndex adapters (extra ``simtool[llamaindex]``).

``SimtoolEmbedding`` encodes with a simtool model or an index's model and reducers; a batch of
node texts is one encoder call. ``SimtoolVectorStore`` keeps nodes (text, metadata, embedding) in a
simtool index directory: it stores text, deletes by document, and filters in SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simtool.embedder import Embedder
from simtool.errors import SimtoolError
from simtool.integrations import require
from simtool.integrations.store import ExternalVectorIndex

_li = require("llama_index.core.base.embeddings.base", "llamaindex")
_pydantic = require("pydantic", "llamaindex")
_li_types = require("llama_index.core.vector_stores.types", "llamaindex")
_li_utils = require("llama_index.core.vector_stores.utils", "llamaindex")
_li_mmr = require("llama_index.core.indices.query.embedding_utils", "llamaindex")
MMR_PREFETCH_FACTOR = 4  # LlamaIndex's DEFAULT_MMR_PREFETCH_FACTOR
_li_schema = require("llama_index.core.schema", "llamaindex")

__all__ = ["SimtoolEmbedding", "SimtoolVectorStore", "to_simtool_filter"]


class SimtoolEmbedding(_li.BaseEmbedding):  # type: ignore[name-defined]  # the base class comes from an optional extra, loaded at run time
    """LlamaIndex ``BaseEmbedding`` over a simtool encoder (``model`` or ``index_dir``, see ``SimtoolEmbeddings``).

    ``embed_batch_size`` texts go to the encoder at once (LlamaIndex's own batching); within that the
    encoder runs forward passes of ``encode_batch_size``.
    """

    encode_batch_size: int = _pydantic.Field(default=64, gt=0, description="Texts per encoder forward pass.")
    _embedder: Embedder = _pydantic.PrivateAttr()

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        index_dir: str | os.PathLike[str] | None = None,
        device: str | None = None,
        embedder: Embedder | None = None,
        **kwargs: Any,
    ) -> None:
        if embedder is None:
            if index_dir is not None:
                embedder = Embedder.from_index(Path(index_dir), device=device)
            else:
                embedder = Embedder.from_model(model, device=device)
        kwargs.setdefault("model_name", embedder.name)
        super().__init__(**kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "SimtoolEmbedding"

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.encode(texts, batch_size=self.encode_batch_size).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        import asyncio

        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        import asyncio

        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        import asyncio

        return await asyncio.to_thread(self._get_text_embeddings, texts)


# --- vector store -------------------------------------------------------------------------------------

_NODE_ID = "_node_id"  # metadata key holding the node id, so node_ids= becomes a filter
_OPS = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte", "in": "$in", "nin": "$nin"}
_NEGATED = {"==": "!=", "!=": "==", "in": "nin", "nin": "in"}  # exact negations; GT... would also match absent keys


def to_simtool_filter(filters: Any, *, negate: bool = False) -> dict[str, Any] | None:
    """LlamaIndex ``MetadataFilters`` (nested, AND / OR / NOT) as a filter in simtool's language.

    NOT means "none of these match" (as LlamaIndex's SimpleVectorStore); it is pushed down by De
    Morgan's laws, which is exact for EQ, NE, IN and NIN; NOT over GT/GTE/LT/LTE and the operators
    simtool's language lacks (ANY, ALL, CONTAINS, TEXT_MATCH, IS_EMPTY) is a SimtoolError.
    """
    if filters is None or not filters.filters:
        return None
    condition = str(getattr(filters.condition, "value", filters.condition) or "and")
    if condition not in ("and", "or", "not"):
        raise SimtoolError(f"filters.condition {condition!r} is not supported (and, or, not)")
    # NOT(f1..fn) == AND(not f1..not fn); negating flips the combinator (De Morgan)
    child_negate = negate != (condition == "not")
    conj = condition == "or" if negate else condition in ("and", "not")
    parts: list[dict[str, Any]] = []
    for f in filters.filters:
        if isinstance(f, _li_types.MetadataFilters):
            sub = to_simtool_filter(f, negate=child_negate)
            if sub is None:
                continue
            parts.append(sub)
        else:
            parts.append(_leaf(f, child_negate))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return {"$and" if conj else "$or": parts}


def _leaf(f: Any, negate: bool) -> dict[str, Any]:
    op = str(getattr(f.operator, "value", f.operator))
    if negate:
        if op not in _NEGATED:
            raise SimtoolError(f"filter on {f.key!r}: NOT over operator {op!r} is not supported (only ==, !=, in, nin)")
        op = _NEGATED[op]
    if op not in _OPS:
        raise SimtoolError(f"filter on {f.key!r}: operator {op!r} is not supported; use one of {', '.join(_OPS)}")
    value = list(f.value) if isinstance(f.value, (list, tuple)) else f.value
    if op in ("in", "nin") and not isinstance(value, list):
        value = [value]
    return {f.key: {_OPS[op]: value}}


class SimtoolVectorStore(_li_types.BasePydanticVectorStore):  # type: ignore[name-defined]  # the base class comes from an optional extra, loaded at run time
    """A LlamaIndex vector store in a simtool index directory (``index_dir``), created by the first add.

    Each node's text, metadata and relationships are kept (``stores_text``); ``delete(ref_doc_id)``
    removes every node of a document; ``MetadataFilters`` run in SQLite. ``distance`` for a new
    directory: ``"cosine"`` (as LlamaIndex's default store), ``"ip"`` or ``"l2"``. Writes are durable
    and visible to the next query when they return; safe across threads.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    index_dir: str
    distance: str = "cosine"
    _store: ExternalVectorIndex = _pydantic.PrivateAttr()

    def __init__(self, index_dir: str | os.PathLike[str], *, distance: str = "cosine", **kwargs: Any) -> None:
        super().__init__(index_dir=str(index_dir), distance=distance, **kwargs)
        self._store = ExternalVectorIndex(index_dir, distance=distance, framework="llamaindex")
        self.distance = self._store.distance

    @classmethod
    def class_name(cls) -> str:
        return "SimtoolVectorStore"

    @property
    def client(self) -> ExternalVectorIndex:
        return self._store

    # --- writes ----------------------------------------------------------------------------------
    def add(self, nodes: Sequence[Any], **kwargs: Any) -> list[str]:
        """Store nodes with their embeddings (computed already, by the index) in one commit; returns their ids."""
        from simtool.corpus import Document

        if not nodes:
            return []
        docs, vectors = [], []
        for node in nodes:
            embedding = node.get_embedding()  # raises naming the node when it has none
            meta = _li_utils.node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
            meta[_NODE_ID] = node.node_id
            text = node.get_content(metadata_mode=_li_schema.MetadataMode.NONE)
            docs.append(Document(id=node.node_id, text=text, metadata=meta))
            vectors.append(embedding)
        self._store.upsert(docs, vectors)
        return [d.id for d in docs]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of document ``ref_doc_id``."""
        self._store.delete_where({"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: list[str] | None = None, filters: Any = None, **delete_kwargs: Any) -> None:
        """Delete the nodes with these ids and matching ``filters`` (either may be None)."""
        where = self._where(node_ids, None, filters)
        if where is None:
            raise SimtoolError("delete_nodes needs node_ids or filters; use clear() to delete everything")
        self._store.delete_where(where)

    def clear(self) -> None:
        self._store.delete_where(None)

    # --- reads -----------------------------------------------------------------------------------
    def _where(self, node_ids: list[str] | None, doc_ids: list[str] | None, filters: Any) -> dict[str, Any] | None:
        parts = []
        # an empty list means no restriction: VectorIndexRetriever passes node_ids=[] (as SimpleVectorStore reads it)
        if node_ids:
            parts.append({_NODE_ID: {"$in": list(node_ids)}})
        if doc_ids:
            parts.append({"ref_doc_id": {"$in": list(doc_ids)}})
        translated = to_simtool_filter(filters)
        if translated is not None:
            parts.append(translated)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"$and": parts}

    @staticmethod
    def _node(doc: Any) -> Any:
        meta = {k: v for k, v in doc.metadata.items() if k != _NODE_ID}
        return _li_utils.metadata_dict_to_node(meta, text=doc.text)

    def get_nodes(self, node_ids: list[str] | None = None, filters: Any = None) -> list[Any]:
        """Stored nodes by id (in the order given) and/or filter."""
        if node_ids and filters is None:
            found = self._store.get(node_ids)
            return [self._node(found[i]) for i in node_ids if i in found]
        ids = self._store.ids_where(self._where(node_ids, None, filters))
        found = self._store.get(ids)
        return [self._node(found[i]) for i in ids]

    def query(self, query: Any, **kwargs: Any) -> Any:
        """Top ``similarity_top_k`` nodes for ``query_embedding``; similarities higher = closer
        (cosine, inner product, or minus the squared L2).

        ``mmr`` mode: LlamaIndex's own MMR (``get_top_k_mmr_embeddings``, kwarg ``mmr_threshold``) over the
        ``mmr_prefetch_k`` nearest (default ``mmr_prefetch_factor`` × top k, 4 as in LlamaIndex), with the
        vectors the index holds; its similarities are MMR scores, as ``SimpleVectorStore`` returns."""
        mode = str(getattr(query.mode, "value", query.mode))
        if mode not in ("default", "mmr"):
            raise SimtoolError(f"query mode {mode!r} is not supported by SimtoolVectorStore (only 'default', 'mmr')")
        if query.query_embedding is None:
            raise SimtoolError("query.query_embedding is None; SimtoolVectorStore searches by embedding")
        where = self._where(query.node_ids, query.doc_ids, query.filters)
        if mode == "default":
            hits = self._store.search(query.query_embedding, query.similarity_top_k, where)
            return _li_types.VectorStoreQueryResult(
                nodes=[self._node(h) for h, _ in hits],
                similarities=[h.score for h, _ in hits],
                ids=[h.id for h, _ in hits],
            )
        prefetch = kwargs.get("mmr_prefetch_k") or query.similarity_top_k * kwargs.get(
            "mmr_prefetch_factor", MMR_PREFETCH_FACTOR
        )
        hits = self._store.search(query.query_embedding, int(prefetch), where)
        if not hits:
            return _li_types.VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        scores, ids = _li_mmr.get_top_k_mmr_embeddings(
            self._store.query_vector(query.query_embedding)[0].tolist(),
            [v.tolist() for _, v in hits],
            similarity_top_k=query.similarity_top_k,
            embedding_ids=list(range(len(hits))),
            mmr_threshold=kwargs.get("mmr_threshold"),
        )
        chosen = [hits[i][0] for i in ids]
        return _li_types.VectorStoreQueryResult(
            nodes=[self._node(h) for h in chosen], similarities=list(scores), ids=[h.id for h in chosen]
        )

    def refresh(self) -> None:
        """See what other writers (other stores or processes on this directory) committed since; a store
        sees its own writes without this."""
        self._store.refresh()

    def close(self) -> None:
        """Release the reader (its lease on a generation)."""
        self._store.close()
