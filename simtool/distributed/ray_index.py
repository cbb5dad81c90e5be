"""Building or adding to a live index from a Ray cluster: actors encode, the driver commits once.

Each Ray batch comes back as one :class:`simtool.index.EncodedPart` (documents + raw vectors
``(n, d) float32``); nothing touches the index until every part is in, then :meth:`Index.append`
publishes them as one generation. A failed job (duplicate id, worker error) writes nothing. Ray
retries a killed actor's batch; the driver only ever keeps the one result Ray delivers per block,
so a retry cannot duplicate a row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simtool.corpus import Document
from simtool.distributed.ray_encode import RayOptions, actor_plan, corpus_dataset, encoded_dataset
from simtool.errors import CorpusError, SimtoolError
from simtool.index import EncodedPart, Index, OnDuplicate, build_index, model_info
from simtool.manifest import ModelInfo

log = logging.getLogger(__name__)


def encode_parts_ray(
    paths: Sequence[str | Path],
    model: ModelInfo,
    *,
    options: RayOptions | None = None,
    batch_size: int = 64,
    fields: dict[str, str | None] | None = None,
) -> Iterator[EncodedPart]:
    """The corpus files as parts, in file then line order, encoded by Ray actors holding ``model``."""
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
    )
    for batch in encoded.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        docs = [
            Document(id=str(i), text=str(text), title=None if title is None else str(title), metadata=json.loads(meta))
            for i, text, title, meta in zip(batch["id"], batch["text"], batch["title"], batch["metadata"], strict=True)
        ]
        yield EncodedPart(docs, np.ascontiguousarray(np.stack(list(batch["embedding"])), dtype=np.float32))


def _parts_with_unique_ids(parts: list[EncodedPart], paths: Sequence[str | Path]) -> int:
    """The number of documents; a duplicate id anywhere fails here, naming it, before anything is written."""
    seen: set[str] = set()
    for part in parts:
        for doc in part.docs:
            if doc.id in seen:
                raise CorpusError(f"duplicate id {doc.id!r} across the input files {', '.join(map(str, paths))}")
            seen.add(doc.id)
    if not seen:
        raise SimtoolError(f"{', '.join(map(str, paths))}: nothing to index")
    return len(seen)


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
) -> dict[str, Any]:
    """Encode corpus files on Ray and build a new index from them, which appears whole or not at all.

    The driver loads the model once (for its fingerprint and dimension); every actor checks its copy
    against that fingerprint. IVF/PQ factories train once on the driver, over all parts, exactly as the
    single-process build does, so both builds give the same index. Returns
    ``{"generation", "added", "parts", "workers"}``.
    """
    from simtool.encoder import load_encoder

    options = options or RayOptions()
    encoder = load_encoder(model, pooling, None, max_seq_length)
    parts = list(encode_parts_ray(paths, model_info(encoder), options=options, batch_size=batch_size, fields=fields))
    added = _parts_with_unique_ids(parts, paths)
    manifest = build_index(
        parts,
        index_dir,
        model=encoder,
        factory=factory,
        metric=metric,
        gpu=gpu,
        memory_budget=memory_budget,
        progress=False,
    )
    log.info("built %d documents from %d Ray parts as generation %d", added, len(parts), manifest.generation)
    return {"generation": manifest.generation, "added": added, "parts": len(parts), "workers": actor_plan(options)[0]}


def add_to_index_ray(
    paths: Sequence[str | Path],
    index_dir: str | Path | None = None,
    *,
    options: RayOptions | None = None,
    batch_size: int = 64,
    fields: dict[str, str | None] | None = None,
    on_duplicate: OnDuplicate = "error",
    lock_timeout: float = 30.0,
) -> dict[str, Any]:
    """Encode corpus files on Ray with the index's own model and commit them as ONE generation.

    Ids must be unique across all files (a duplicate fails before any commit, naming it).
    Returns ``{"generation", "added", "parts", "workers"}``. Parts are held in memory until the commit.
    """
    options = options or RayOptions()
    index = Index(index_dir, lock_timeout=lock_timeout)
    if index.manifest.long_text:
        # the actors encode whole texts; an index built with chunk-mean must get chunk-mean vectors
        raise SimtoolError(
            f"{index.directory}: built with long_text {index.manifest.long_text['mode']!r}, not on Ray yet"
        )
    parts = list(encode_parts_ray(paths, index.manifest.model, options=options, batch_size=batch_size, fields=fields))
    added = _parts_with_unique_ids(parts, paths)
    generation = index.append(iter(parts), on_duplicate=on_duplicate)
    log.info("committed %d documents from %d Ray parts as generation %d", added, len(parts), generation)
    return {"generation": generation, "added": added, "parts": len(parts), "workers": actor_plan(options)[0]}
