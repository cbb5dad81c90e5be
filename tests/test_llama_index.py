"""LlamaIndex embedding adapter: real batching, same vectors as the LangChain adapter and the encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simtool.integrations.llama_index import SimtoolEmbedding
from tests.conftest import count_encode_calls


def test_text_embeddings_batch_into_one_encode(tiny_st: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simtool.encoder import load_encoder

    emb = SimtoolEmbedding(str(tiny_st), device="cpu", embed_batch_size=4)
    calls = count_encode_calls(monkeypatch, emb.embedder.encoder)
    texts = [f"the cat number {i}" for i in range(10)]
    vectors = emb.get_text_embedding_batch(texts)
    assert calls == [4, 4, 2]  # embed_batch_size texts per encoder call, not one call per text
    reference = load_encoder(str(tiny_st), device="cpu").encode(texts)
    np.testing.assert_allclose(np.array(vectors), reference, atol=1e-6)
    np.testing.assert_allclose(emb.get_query_embedding(texts[3]), reference[3], atol=1e-6)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_async_embeddings_match_sync(tiny_st: Path) -> None:
    emb = SimtoolEmbedding(str(tiny_st), device="cpu")
    texts = ["a red bus", "python list"]
    np.testing.assert_allclose(
        await emb.aget_text_embedding_batch(texts), emb.get_text_embedding_batch(texts), atol=1e-6
    )
