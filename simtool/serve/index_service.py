"""The index behind ``/v1/search`` and ``/v1/documents``: one :class:`Retriever` for reads, one writer for writes.

Reads search a snapshot and never wait on a write. Writes are serialised in this process by a lock
and across processes by the index's own writer lock; each is one atomic commit, after which the
retriever is refreshed, so a 200 means the commit is on disk and the next search sees it. Searches
also pick up generations other processes publish (``simtool index add``, a second ``--workers``
process): a changed ``manifest.json`` (inode, size or mtime) triggers a refresh before the search.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simtool.corpus import Document
from simtool.embedder import Embedder
from simtool.errors import SimtoolError
from simtool.filters import FilterError, parse_filter
from simtool.index import ON_DUPLICATE, DuplicateIdError, Index, load_reducers
from simtool.manifest import MANIFEST_NAME
from simtool.retriever import Hit, Retriever

log = logging.getLogger(__name__)


class RequestError(SimtoolError):
    """A bad request: ``status`` (HTTP), ``param`` (the JSON field at fault), ``code`` (machine-readable)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass(frozen=True)
class SearchRequest:
    queries: list[str]
    batch: bool  # "queries" (answer {"data": [...]}) rather than "query"
    k: int
    filter: dict[str, Any] | None


@dataclass(frozen=True)
class WriteRequest:
    docs: list[Document]
    delete: list[str]
    on_duplicate: str


def _check_texts(texts: list[str], param: str, max_items: int, max_chars: int, what: str) -> None:
    if len(texts) > max_items:
        raise RequestError(
            413, f"{param} has {len(texts)} {what}; the limit is {max_items}", param=param, code="too_many_inputs"
        )
    for i, t in enumerate(texts):
        if len(t) > max_chars:
            raise RequestError(
                413,
                f"{param}[{i}] has {len(t)} characters; the limit is {max_chars}",
                param=param,
                code="text_too_long",
            )
        if not t.strip():
            raise RequestError(422, f"{param}[{i}] is empty", param=param)


def parse_search(body: Any, *, max_queries: int, max_chars: int, max_k: int) -> SearchRequest:
    """``{"query": str | "queries": [str], "k": int, "filter": {...}}`` checked, or a RequestError."""
    if not isinstance(body, dict):
        raise RequestError(422, "request body must be a JSON object")
    if ("query" in body) == ("queries" in body):
        raise RequestError(422, "give exactly one of query (a string) or queries (a list of strings)", param="query")
    if "query" in body:
        if not isinstance(body["query"], str):
            raise RequestError(422, f"query must be a string, got {type(body['query']).__name__}", param="query")
        queries, batch, param = [body["query"]], False, "query"
    else:
        raw = body["queries"]
        if not isinstance(raw, list) or not raw or not all(isinstance(q, str) for q in raw):
            raise RequestError(422, "queries must be a non-empty list of strings", param="queries")
        queries, batch, param = raw, True, "queries"
    _check_texts(queries, param, max_queries, max_chars, "queries")
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise RequestError(422, f"k must be an integer in 1..{max_k}, got {k!r}", param="k")
    raw_filter = body.get("filter")
    if raw_filter is not None and not isinstance(raw_filter, dict):
        raise RequestError(400, f"filter must be a JSON object, got {type(raw_filter).__name__}", param="filter")
    try:
        parsed = parse_filter(raw_filter)
    except FilterError as e:
        raise RequestError(400, str(e), param="filter", code="invalid_filter") from None
    return SearchRequest(queries, batch, k, parsed)


def _document(i: int, raw: Any, max_chars: int) -> Document:
    where = f"documents[{i}]"
    if not isinstance(raw, dict):
        raise RequestError(422, f"{where} must be an object with id and text", param="documents")
    unknown = set(raw) - {"id", "text", "title", "metadata"}
    if unknown:
        raise RequestError(422, f"{where} has unknown field(s) {', '.join(sorted(unknown))}", param="documents")
    doc_id, text, title, metadata = raw.get("id"), raw.get("text"), raw.get("title"), raw.get("metadata")
    if not isinstance(doc_id, str) or not doc_id:
        raise RequestError(422, f"{where}.id must be a non-empty string, got {doc_id!r}", param="documents")
    if not isinstance(text, str) or not text.strip():
        raise RequestError(422, f"{where}.text must be a non-empty string", param="documents")
    if title is not None and not isinstance(title, str):
        raise RequestError(422, f"{where}.title must be a string or null", param="documents")
    if metadata is not None and not isinstance(metadata, dict):
        raise RequestError(422, f"{where}.metadata must be a JSON object", param="documents")
    size = len(text) + len(title or "")
    if size > max_chars:
        raise RequestError(
            413, f"{where} has {size} characters; the limit is {max_chars}", param="documents", code="text_too_long"
        )
    return Document(id=doc_id, text=text, title=title, metadata=metadata or {})


def parse_documents(body: Any, *, max_docs: int, max_chars: int) -> WriteRequest:
    """``{"documents": [{"id", "text", "title"?, "metadata"?}], "on_duplicate": ...}`` checked."""
    if not isinstance(body, dict):
        raise RequestError(422, "request body must be a JSON object")
    raw = body.get("documents")
    if not isinstance(raw, list) or not raw:
        raise RequestError(422, "documents must be a non-empty list of objects", param="documents")
    if len(raw) > max_docs:
        raise RequestError(
            413, f"documents has {len(raw)} items; the limit is {max_docs}", param="documents", code="too_many_inputs"
        )
    docs = [_document(i, d, max_chars) for i, d in enumerate(raw)]
    seen: set[str] = set()
    for d in docs:
        if d.id in seen:
            raise RequestError(422, f"documents: id {d.id!r} appears twice", param="documents")
        seen.add(d.id)
    # replace by default: a client that lost a response can resend the same request safely
    on_duplicate = body.get("on_duplicate", "replace")
    if on_duplicate not in ON_DUPLICATE:
        raise RequestError(
            422, f"on_duplicate must be one of {', '.join(ON_DUPLICATE)}, got {on_duplicate!r}", param="on_duplicate"
        )
    return WriteRequest(docs, [], on_duplicate)


def parse_delete(body: Any, *, max_ids: int) -> WriteRequest:
    """``{"ids": [str, ...]}`` checked."""
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise RequestError(422, "ids must be a non-empty list of non-empty strings", param="ids")
    if len(ids) > max_ids:
        raise RequestError(
            413, f"ids has {len(ids)} items; the limit is {max_ids}", param="ids", code="too_many_inputs"
        )
    return WriteRequest([], list(dict.fromkeys(ids)), "error")


class IndexService:
    """Search and write one index directory, sharing ``embedder``'s model (no second copy in memory)."""

    def __init__(self, embedder: Embedder, index_dir: str | Path, *, encode_batch_size: int = 64) -> None:
        self.directory = Path(index_dir)
        self.embedder = embedder
        self.encode_batch_size = encode_batch_size
        self.retriever = Retriever.load(self.directory, encoder=embedder.encoder)
        self.index = Index(self.directory, encoder=embedder.encoder)
        self._write_lock = threading.Lock()
        self._seen = self._stamp()
        self._reducers = self.retriever.manifest.reducers

    def _stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.directory / MANIFEST_NAME)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def stale(self) -> bool:
        """True when ``manifest.json`` changed since the last look: one stat, cheap enough for the event loop."""
        return self._stamp() != self._seen

    def refresh_if_changed(self) -> None:
        """Refresh the retriever when ``manifest.json`` changed since the last look (one stat otherwise)."""
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            self._refresh()

    def _refresh(self) -> None:
        self.retriever.refresh()
        manifest = self.retriever.manifest
        if manifest.reducers != self._reducers:  # re-whitened or projected elsewhere: encode as the index now does
            self.embedder.reducers = load_reducers(manifest, self.directory)
            self._reducers = manifest.reducers
            log.info("the index's reducers changed (generation %d); queries follow", manifest.generation)

    def search(self, vectors: np.ndarray, k: int, filter: dict[str, Any] | None) -> list[list[Hit]]:
        """Hits per query for ``(nq, dim)`` vectors from ``embedder.encode`` (the index's reducers applied).
        Call :meth:`refresh_if_changed` before encoding, so the vectors are reduced as this snapshot reduces."""
        if vectors.shape[1] != self.retriever.manifest.dim:
            raise RequestError(
                503, "the index's reducers changed while this query was encoded; retry", code="index_changed"
            )
        return self.retriever.search_encoded(vectors, k, filter=filter)

    def write(self, request: WriteRequest) -> dict[str, Any]:
        """Encode (outside the writer lock), commit, refresh; returns the JSON reply. Blocks: run in a thread."""
        vectors = None
        if request.docs:
            vectors = self.embedder.encode_raw(
                [d.encoded_text for d in request.docs], batch_size=self.encode_batch_size
            )
        with self._write_lock:
            try:
                result = self.index.write(
                    request.docs,
                    delete=request.delete,
                    on_duplicate=request.on_duplicate,  # type: ignore[arg-type]
                    vectors=vectors,
                )
            except DuplicateIdError as e:
                raise RequestError(409, str(e), param="documents", code="duplicate_id") from None
            self._refresh()
            self._seen = self._stamp()
        log.info("write: generation %d, +%d -%d", result.generation, result.added, result.deleted)
        return {
            "object": "write",
            "generation": result.generation,
            "added": result.added,
            "deleted": result.deleted,
            "skipped": result.skipped,
            "missing": result.missing,
        }

    def close(self) -> None:
        self.retriever.close()
