"""LlamaIndex adapters (extra ``simtool[llamaindex]``).

``SimtoolEmbedding`` encodes with a simtool model or an index's model and reducers; a batch of
node texts is one encoder call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simtool.embedder import Embedder
from simtool.integrations import require

_li = require("llama_index.core.base.embeddings.base", "llamaindex")
_pydantic = require("pydantic", "llamaindex")

__all__ = ["SimtoolEmbedding"]


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
