"""LangChain adapters (extra ``simtool[langchain]``).

``SimtoolEmbeddings`` encodes with a simtool model, or with an index's model and reducers, so that
LangChain components see the same vectors as ``simtool search``.
"""

from __future__ import annotations

import os
from pathlib import Path

from simtool.embedder import Embedder
from simtool.errors import SimtoolError
from simtool.integrations import require

_lc = require("langchain_core.embeddings", "langchain")

__all__ = ["SimtoolEmbeddings"]


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
        if batch_size <= 0:
            raise SimtoolError(f"batch_size must be positive, got {batch_size}")
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
