"""Building or adding to a live index from a Ray cluster: actors encode, the driver commits once.

Each Ray batch comes back as one :class:`simtool.index.EncodedPart` (documents + raw vectors
``(n, d) float32``). The driver streams the parts into new segments of at most ``segment_rows``
rows as they arrive (it holds the ids, never the vectors), checks each id against every earlier
one, and publishes all the segments as one generation at the end. A factory that must be trained
(IVF, PQ) is trained once, on a seeded sample of every row, and each segment is filled from it, as
the single-process build trains, so both builds give the same index; segments filled from one
trained IVF index later merge their inverted lists on disk (:meth:`Index.compact`). A failed job
(duplicate id, worker error) writes nothing. Ray retries a killed actor's batch; the driver keeps
the one result Ray delivers per block, so a retry cannot duplicate a row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simtool.chunking import DEFAULT_CHUNK_OVERLAP, index_long_text
from simtool.corpus import Document
from simtool.distributed.ray_encode import (
    RayOptions,
    actor_plan,
    corpus_dataset,
    encoded_dataset,
    ray_long_text,
    resolve_backend,
)
from simtool.errors import SimtoolError
from simtool.index import EncodedPart, Index, OnDuplicate, build_index, model_info, unique_ids
from simtool.manifest import ModelInfo
from simtool.protocols import encoder_info

log = logging.getLogger(__name__)

# Rows per segment written by a Ray job: each segment's FAISS index is built from its own memory-mapped
# vectors, so this bounds the driver's peak memory (1M x 384 float32 = 1.5 GB) while a large job still
# yields few segments for searches to fan out over.
DEFAULT_SEGMENT_ROWS = 1_000_000


def encode_parts_ray(
    paths: Sequence[str | Path],
    model: ModelInfo,
    *,
    options: RayOptions | None = None,
    batch_size: int = 64,
    fields: dict[str, str | None] | None = None,
    backend: str = "torch",
    long_text: dict[str, Any] | None = None,
) -> Iterator[EncodedPart]:
    """The corpus files as parts, in file then line order, encoded by Ray actors holding ``model``
    through ``backend`` (a concrete name), long texts as the manifest record ``long_text`` says."""
    from simtool.encoder import POOLINGS

    options = options or RayOptions()
    ds = corpus_dataset(paths, options, fields)
    pooling = model.pooling if model.pooling in POOLINGS else None
    encoded = encoded_dataset(
        ds,
        model.name_or_path,
        pooling,
        model.max_seq_length,
        options=options,
        batch_size=batch_size,
        fingerprint=model.fingerprint,
        backend=backend,
        long_text=long_text,
    )
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        docs = [
            Document(id=str(i), text=str(text), title=None if title is None else str(title), metadata=json.loads(meta))
            for i, text, title, meta in zip(batch["id"], batch["text"], batch["title"], batch["metadata"], strict=True)
        ]
        yield EncodedPart(docs, np.ascontiguousarray(np.stack(list(batch["embedding"])), dtype=np.float32))


def _counted(parts: Iterator[EncodedPart], counter: list[int]) -> Iterator[EncodedPart]:
    for part in parts:
        counter[0] += len(part.docs)
        counter[1] += 1
        yield part


def _files(paths: Sequence[str | Path]) -> str:
    return f"the input files {', '.join(map(str, paths))}"


def build_index_ray(
    paths: Sequence[str | Path],
    index_dir: str | Path | None = None,
    *,
    model: str | Path | None = None,
    pooling: str | None = None,
    max_seq_length: int | None = None,
    factory: str = "auto",
    metric: str = "ip",
    gpu: bool = True,
    memory_budget: int | None = None,
    options: RayOptions | None = None,
    batch_size: int = 64,
    fields: dict[str, str | None] | None = None,
    segment_rows: int | None = DEFAULT_SEGMENT_ROWS,
    backend: str = "torch",
    long_text: str = "truncate",
    chunk_tokens: int | None = None,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> dict[str, Any]:
    """Encode corpus files on Ray and build a new index from them, which appears whole or not at all.

    The driver loads the model once, through ``backend`` (``auto`` is resolved there), for its fingerprint,
    dimension and the manifest's backend record; every actor loads the same backend and checks its copy
    against that fingerprint. ``long_text``: ``truncate`` or ``chunk-mean``, recorded in the manifest.
    Returns ``{"generation", "added", "parts", "segments", "workers", "backend"}``.
    """
    from simtool.encoder import load_encoder

    options = options or RayOptions()
    ray_long_text({"mode": long_text, "chunk_overlap": chunk_overlap})  # refuses chunk-max before any work
    encoder = load_encoder(model, pooling, None, max_seq_length, backend=resolve_backend(model, backend, options))
    record = index_long_text(encoder, long_text, chunk_tokens, chunk_overlap)
    chosen = encoder_info(encoder).backend
    counter = [0, 0]
    parts = encode_parts_ray(
        paths,
        model_info(encoder),
        options=options,
        batch_size=batch_size,
        fields=fields,
        backend=chosen,
        long_text=record,
    )
    manifest = build_index(
        unique_ids(_counted(parts, counter), _files(paths)),
        index_dir,
        model=encoder,
        factory=factory,
        metric=metric,
        gpu=gpu,
        memory_budget=memory_budget,
        progress=False,
        segment_rows=segment_rows,
        long_text=long_text,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
    )
    log.info("built %d documents from %d Ray parts as generation %d", counter[0], counter[1], manifest.generation)
    return {
        "generation": manifest.generation,
        "added": counter[0],
        "parts": counter[1],
        "segments": len(manifest.segments),
        "workers": actor_plan(options)[0],
        "backend": chosen,
    }


def add_to_index_ray(
    paths: Sequence[str | Path],
    index_dir: str | Path | None = None,
    *,
    options: RayOptions | None = None,
    batch_size: int = 64,
    fields: dict[str, str | None] | None = None,
    on_duplicate: OnDuplicate = "error",
    lock_timeout: float = 30.0,
    segment_rows: int | None = DEFAULT_SEGMENT_ROWS,
    backend: str | None = None,
) -> dict[str, Any]:
    """Encode corpus files on Ray with the index's own model and commit them as ONE generation.

    ``backend``: as :class:`~simtool.index.Index` takes it (``None``: the index's own; within its tolerance),
    resolved once on the driver for every actor. Ids must be unique across all files (a duplicate fails before
    any commit, naming it). Returns ``{"generation", "added", "parts", "segments", "workers", "backend"}``.
    """
    options = options or RayOptions()
    index = Index(index_dir, lock_timeout=lock_timeout, backend=backend)
    try:
        ray_long_text(index.manifest.long_text)  # the actors encode as the index was built
    except SimtoolError as e:
        raise SimtoolError(f"{index.directory}: {e}") from None
    before = {s.name for s in index.manifest.segments}
    counter = [0, 0]
    # the driver's encoder is loaded (and checked against the manifest) only to name the backend the actors use
    chosen = encoder_info(index.encoder()).backend
    parts = encode_parts_ray(
        paths,
        index.manifest.model,
        options=options,
        batch_size=batch_size,
        fields=fields,
        backend=chosen,
        long_text=index.manifest.long_text,
    )
    generation = index.append(
        _counted(parts, counter), on_duplicate=on_duplicate, segment_rows=segment_rows, source=_files(paths)
    )
    if counter[0] == 0:
        raise SimtoolError(f"{', '.join(map(str, paths))}: nothing to index")
    log.info("committed %d documents from %d Ray parts as generation %d", counter[0], counter[1], generation)
    new = [s for s in index.manifest.segments if s.name not in before]
    return {
        "generation": generation,
        "added": counter[0],
        "parts": counter[1],
        "segments": len(new),
        "workers": actor_plan(options)[0],
        "backend": chosen,
    }
