"""Search an index directory: load once, then each batch of queries is one encode and one search."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from simtool.config import default_index_dir
from simtool.docstore import DocStore
from simtool.encoder import encode_texts
from simtool.errors import SimtoolError
from simtool.index import DOCS_FILE, VECTORS_FILE, load_index_encoder, load_reducers, read_faiss
from simtool.manifest import Manifest
from simtool.reduce.base import LinearReducer, apply_chain
from simtool.vector_index import FaissSearcher, Searcher, TorchExactSearcher

Backend = Literal["auto", "faiss", "torch"]


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is the inner product (metric ip) or the squared L2 distance (l2, lower is closer).
    """

    rank: int
    id: str
    score: float
    title: str | None
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "score": self.score, "title": self.title, "text": self.text}


def _faiss_has_gpu() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _faiss_installed() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(manifest: Manifest, backend: Backend, device: str | None) -> tuple[str, str]:
    """``(backend, torch_device)``: faiss when it can serve; torch exact search on CUDA when faiss has no GPU."""
    if backend not in ("auto", "faiss", "torch"):
        raise SimtoolError(f"--backend must be auto, faiss or torch, got {backend!r}")
    torch_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend != "auto":
        return backend, torch_device
    if not _faiss_installed():
        return "torch", torch_device
    exact = manifest.factory.replace(" ", "") == "Flat"
    if exact and torch_device.startswith("cuda") and not _faiss_has_gpu():
        return "torch", torch_device
    return "faiss", torch_device


class Retriever:
    """Encodes queries as the index's documents were encoded and searches the index."""

    def __init__(
        self,
        index_dir: Path,
        manifest: Manifest,
        encoder: Any,
        searcher: Searcher,
        store: DocStore,
        reducers: Sequence[LinearReducer] = (),
    ) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        self.encoder = encoder
        self.searcher = searcher
        self.store = store
        self.reducers = list(reducers)

    @classmethod
    def load(
        cls,
        index_dir: str | Path | None = None,
        *,
        device: str | None = None,
        backend: Backend = "auto",
        gpu: bool = True,
        verify: bool = True,
        search_params: dict[str, int] | None = None,
    ) -> Retriever:
        """Open an index directory: manifest, checksums, encoder (fingerprint-checked), searcher, store.

        ``search_params`` (e.g. ``{"nprobe": 32, "efSearch": 128}``) override the manifest's.
        """
        directory = Path(index_dir) if index_dir is not None else default_index_dir()
        manifest = Manifest.load(directory)
        reducers = load_reducers(manifest, directory, verify=verify)
        chosen, torch_device = choose_backend(manifest, backend, device)
        if chosen == "faiss":
            params = {**manifest.search_params, **(search_params or {})}
            searcher: Searcher = FaissSearcher(read_faiss(manifest, directory, verify=verify), params, gpu=gpu)
        else:
            path = manifest.verify_file(directory, VECTORS_FILE) if verify else directory / VECTORS_FILE
            vectors = apply_chain(reducers, np.load(path, mmap_mode="r"))
            searcher = TorchExactSearcher(vectors, manifest.metric, torch_device)
        docs = manifest.verify_file(directory, DOCS_FILE) if verify else directory / DOCS_FILE
        encoder = load_index_encoder(manifest, device)
        return cls(directory, manifest, encoder, searcher, DocStore(docs), reducers)

    def encode(self, queries: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``(len(queries), dim)`` float32 query vectors, exactly as the documents were: encoder, then reducers."""
        return apply_chain(self.reducers, encode_texts(self.encoder, list(queries), batch_size=batch_size))

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k: ``(scores, rows)``, each ``(nq, k)``; rows are -1 where fewer than k documents exist."""
        if k <= 0:
            raise SimtoolError(f"k must be positive, got {k}")
        return self.searcher.search(vectors, k)

    @overload
    def search(self, queries: str, k: int = ...) -> list[Hit]: ...
    @overload
    def search(self, queries: Sequence[str], k: int = ...) -> list[list[Hit]]: ...

    def search(self, queries: str | Sequence[str], k: int = 10) -> list[Hit] | list[list[Hit]]:
        """Top-k hits for one query (a list of hits) or for a batch (a list per query)."""
        single = isinstance(queries, str)
        batch = [queries] if single else list(queries)
        if k <= 0:
            raise SimtoolError(f"k must be positive, got {k}")
        for i, q in enumerate(batch):
            if not isinstance(q, str) or not q.strip():
                raise SimtoolError(f"query {i + 1} is empty")
        scores, rows = self.search_vectors(self.encode(batch), k)
        docs = self.store.get_rows(rows.ravel().tolist())
        results = [
            [
                Hit(rank=r + 1, id=d.id, score=float(s), title=d.title, text=d.text, metadata=d.metadata)
                for r, (s, d) in enumerate((s, docs[row]) for s, row in zip(srow, rrow, strict=True) if row >= 0)
            ]
            for srow, rrow in zip(scores, rows, strict=True)
        ]
        return results[0] if single else results

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
