"""Long texts for any encoder: truncation, or token windows pooled by mean (one vector) or max (MaxP).

- ``truncate``: the model reads its first ``max_seq_length`` tokens (one warning per model when a text is cut).
- ``chunk-mean``: windows of ``chunk_tokens`` tokens overlapping by ``chunk_overlap``, encoded
  separately; the document vector is their mean, re-normalised when the model's vectors are unit length.
- ``chunk-max``: one vector per window; a document scores as its best window (:func:`max_by_owner`,
  :func:`dedupe_chunk_hits`), so a search returns each document at most once. An index built so keeps
  each segment's chunk -> document row map (:mod:`simtool.segments`) and searches documents.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simtool.errors import SimtoolError

log = logging.getLogger(__name__)

LONG_TEXT_MODES = ("truncate", "chunk-mean", "chunk-max")
DEFAULT_CHUNK_OVERLAP = 32

_warned: set[int] = set()
_warned_lock = threading.Lock()


@dataclass(frozen=True)
class LongEncoding:
    """``vectors`` ``(m, d)`` float32 and ``owners`` ``(m,)`` int64: row r belongs to text ``owners[r]``.

    For ``truncate`` and ``chunk-mean`` m equals the number of texts and ``owners`` is ``arange(m)``.
    """

    vectors: np.ndarray
    owners: np.ndarray
    mode: str

    @property
    def n_texts(self) -> int:
        return int(self.owners[-1]) + 1 if len(self.owners) else 0


def check_mode(mode: str) -> str:
    if mode not in LONG_TEXT_MODES:
        raise SimtoolError(f"long_text must be one of {', '.join(LONG_TEXT_MODES)}, got {mode!r}")
    return mode


def resolve_chunk_tokens(model: Any, chunk_tokens: int | None, chunk_overlap: int) -> tuple[int, int]:
    """Window size and overlap in word pieces (special tokens excluded); checked against the model's limit."""
    room = int(model.max_seq_length) - 2  # [CLS] and [SEP]
    size = room if chunk_tokens is None else chunk_tokens
    if size <= 0 or size > room:
        raise SimtoolError(f"chunk_tokens must be in 1..{room} (max_seq_length {model.max_seq_length} - 2), got {size}")
    if chunk_overlap < 0 or chunk_overlap >= size:
        raise SimtoolError(f"chunk_overlap must be in 0..{size - 1}, got {chunk_overlap}")
    return size, chunk_overlap


def token_windows(
    tokenizer: Any, texts: Sequence[str], chunk_tokens: int, chunk_overlap: int
) -> tuple[list[str], np.ndarray]:
    """Split texts into windows of ``chunk_tokens`` word pieces, ``chunk_overlap`` shared between neighbours.

    Windows are cut from the original string at token offsets (no detokenisation), so each keeps
    its exact characters. Returns ``(window texts, owners (m,) int64)``; an empty text gives one window.
    """
    stride = chunk_tokens - chunk_overlap
    windows: list[str] = []
    owners: list[int] = []
    encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    for t, (text, offsets) in enumerate(zip(texts, encoded["offset_mapping"], strict=True)):
        n = len(offsets)
        if n == 0:
            windows.append(text)
            owners.append(t)
            continue
        start = 0
        while True:
            end = min(start + chunk_tokens, n)
            windows.append(text[offsets[start][0] : offsets[end - 1][1]])
            owners.append(t)
            if end == n:
                break
            start += stride
    return windows, np.asarray(owners, dtype=np.int64)


def _warn_truncation_once(model: Any, texts: Sequence[str]) -> None:
    limit = int(model.max_seq_length)
    key = id(model)
    if key in _warned:
        return
    lengths = model.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    longest = max((len(ids) for ids in lengths), default=0)
    if longest > limit:
        with _warned_lock:
            if key in _warned:
                return
            _warned.add(key)
        log.warning(
            "texts longer than the model's %d tokens are truncated (longest here: %d); "
            "use long_text='chunk-mean' or 'chunk-max', or an extended model (simtool extend-positions)",
            limit,
            longest,
        )


def index_long_text(model: Any, mode: str, chunk_tokens: int | None, chunk_overlap: int) -> dict[str, Any]:
    """The manifest's ``long_text`` record for an index build: ``{}`` for truncate, else mode and window.

    ``chunk-mean`` stores one vector per document; ``chunk-max`` one per window, each segment mapping
    its vector rows to document rows, so deletes, upserts and filters still act on whole documents.
    """
    if check_mode(mode) == "truncate":
        return {}
    size, overlap = resolve_chunk_tokens(model, chunk_tokens, chunk_overlap)
    return {"mode": mode, "chunk_tokens": size, "chunk_overlap": overlap}


def check_index_long_text(
    recorded: dict[str, Any],
    long_text: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
) -> None:
    """Refuse a write to an index asking for other long-text settings than its manifest records
    (``recorded``, its ``long_text``); None asks for the index's own. An index encodes every document
    one way, so its search never mixes methods."""
    have = recorded.get("mode", "truncate")
    if long_text is not None and check_mode(long_text) != have:
        raise SimtoolError(
            f"long_text={long_text!r} does not match the index's {have!r} (an index encodes every document "
            "one way); leave it out to use the index's, or build a new index"
        )
    for name, value in (("chunk_tokens", chunk_tokens), ("chunk_overlap", chunk_overlap)):
        if value is not None and value != recorded.get(name):
            if have == "truncate":
                raise SimtoolError(f"{name}={value} does not apply: the index truncates long texts")
            raise SimtoolError(f"{name}={value} does not match the index's {recorded.get(name)}; leave it out")


def encode_long(
    model: Any,
    texts: Sequence[str],
    *,
    mode: str = "truncate",
    chunk_tokens: int | None = None,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Encode texts to ``(len(texts), d)`` float32 by ``truncate`` or ``chunk-mean``; see :func:`encode_chunked`."""
    if check_mode(mode) == "chunk-max":
        raise SimtoolError("long_text='chunk-max' gives one vector per chunk; use encode_chunked")
    return encode_chunked(
        model,
        texts,
        mode=mode,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        batch_size=batch_size,
        progress=progress,
    ).vectors


def encode_chunked(
    model: Any,
    texts: Sequence[str],
    *,
    mode: str = "chunk-max",
    chunk_tokens: int | None = None,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_size: int = 64,
    progress: bool = False,
) -> LongEncoding:
    """Encode texts by ``mode`` (:data:`LONG_TEXT_MODES`); returns vectors with their owning text."""
    from simtool.encoder import embedding_dim, encode_texts

    check_mode(mode)
    texts = list(texts)
    if not texts:
        return LongEncoding(np.zeros((0, embedding_dim(model)), np.float32), np.zeros(0, np.int64), mode)
    if mode == "truncate":
        _warn_truncation_once(model, texts)
        vectors = encode_texts(model, texts, batch_size=batch_size, progress=progress)
        return LongEncoding(vectors, np.arange(len(texts), dtype=np.int64), mode)
    size, overlap = resolve_chunk_tokens(model, chunk_tokens, chunk_overlap)
    windows, owners = token_windows(model.tokenizer, texts, size, overlap)
    vectors = encode_texts(model, windows, batch_size=batch_size, progress=progress)
    if mode == "chunk-max":
        return LongEncoding(vectors, owners, mode)
    return LongEncoding(mean_by_owner(vectors, owners, len(texts)), np.arange(len(texts), dtype=np.int64), mode)


def mean_by_owner(vectors: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Mean of each owner's rows ``(n, d)`` float32; re-normalised when every input row is unit length."""
    sums = np.zeros((n, vectors.shape[1]), np.float64)
    np.add.at(sums, owners, vectors.astype(np.float64))
    counts = np.bincount(owners, minlength=n).astype(np.float64)
    means = sums / np.maximum(counts, 1.0)[:, None]
    if len(vectors) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3):
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means.astype(np.float32)


def max_by_owner(scores: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """Document scores ``(q, n)`` from chunk scores ``(q, m)``: each document's best chunk; -inf if it has none."""
    scores = np.asarray(scores)
    out = np.full((scores.shape[0], n), -np.inf, dtype=scores.dtype)
    if scores.shape[1] == 0:
        return out
    if np.all(owners[1:] >= owners[:-1]):
        # contiguous chunks (how encode_chunked lays them out): one reduceat over the runs
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        out[:, owners[starts]] = np.maximum.reduceat(scores, starts, axis=1)
    else:
        np.maximum.at(out.T, owners, scores.T)
    return out


def search_chunk_max(
    queries: np.ndarray, chunks: np.ndarray, owners: np.ndarray, n: int, k: int, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxP search by inner product: ``(scores (q, k), doc rows (q, k))``, best first, each doc once.

    ``k`` is capped at ``n``; ties break by the lower document row.
    """
    k = min(k, n)
    out_s = np.empty((len(queries), k), np.float32)
    out_i = np.empty((len(queries), k), np.int64)
    for b in range(0, len(queries), block):
        doc_scores = max_by_owner(queries[b : b + block] @ chunks.T, owners, n)
        order = np.argsort(-doc_scores, axis=1, kind="stable")[:, :k]
        out_i[b : b + block] = order
        out_s[b : b + block] = np.take_along_axis(doc_scores, order, axis=1)
    return out_s, out_i


def dedupe_chunk_hits(
    scores: np.ndarray, chunk_rows: np.ndarray, owners: np.ndarray, k: int
) -> tuple[list[float], list[int]]:
    """Chunk hits of one query, best first, to at most ``k`` documents each with its best chunk's score.

    An index search over chunks gives hits sorted by score, so a document's first hit is its best
    chunk. When fewer than ``k`` documents come back the caller searches deeper (more chunks).
    """
    seen: set[int] = set()
    doc_scores: list[float] = []
    docs: list[int] = []
    for s, row in zip(scores, chunk_rows, strict=True):
        if row < 0:
            continue  # faiss pads missing hits with -1
        d = int(owners[row])
        if d in seen:
            continue
        seen.add(d)
        docs.append(d)
        doc_scores.append(float(s))
        if len(docs) == k:
            break
    return doc_scores, docs


def encode_long_file(
    docs: Callable[[], Iterable[Any]],
    n: int,
    output: str | Path,
    model: Any,
    *,
    mode: str = "truncate",
    chunk_tokens: int | None = None,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[Path, int]:
    """:func:`simtool.encoder.encode_file` with a long-text ``mode``; returns ``(ids path, rows written)``.

    ``OUT.ids.json`` holds one id per row, so for ``chunk-max`` a document's id repeats once per
    chunk (rows of one document are contiguous, in window order). ``docs`` yields objects with
    ``.id`` and ``.encoded_text`` (:class:`simtool.corpus.Document`). Both files are written atomically.
    """
    from simtool.atomic import atomic_open, atomic_path
    from simtool.encoder import batched_documents, embedding_dim, encode_file, ids_path_for, progress_bar

    check_mode(mode)
    if mode == "truncate":
        # chunk_tokens / chunk_overlap do not apply: a truncated text is one window of max_seq_length
        return encode_file(docs, n, output, model, batch_size=batch_size, progress=progress), n
    resolve_chunk_tokens(model, chunk_tokens, chunk_overlap)  # refuse bad windows before reading the corpus
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    parts: list[np.ndarray] = []
    ids: list[str] = []
    with progress_bar(n, "encode", progress) as bar:
        for batch in batched_documents(docs()):
            enc = encode_chunked(
                model,
                [d.encoded_text for d in batch],
                mode=mode,
                chunk_tokens=chunk_tokens,
                chunk_overlap=chunk_overlap,
                batch_size=batch_size,
            )
            parts.append(enc.vectors)
            ids.extend(batch[int(o)].id for o in enc.owners)
            bar.update(len(batch))
    # chunk-max's row count is known only after tokenising, so the matrix is written whole at the end
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedding_dim(model)), np.float32)
    with atomic_path(output) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors, allow_pickle=False)
    ids_path = ids_path_for(output)
    with atomic_open(ids_path, "w") as f:
        json.dump(ids, f, ensure_ascii=False)
    return ids_path, len(vectors)
