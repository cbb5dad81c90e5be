"""LangChain adapter: langchain-tests' own embeddings suites, and vectors equal to the index's query encoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from simtool.integrations.langchain import SimtoolEmbeddings
from tests.conftest import count_encode_calls


class _TinyModel:
    model_path: Path

    @pytest.fixture(autouse=True)
    def _model_path(self, tiny_st: Path) -> None:
        type(self).model_path = tiny_st

    @property
    def embeddings_class(self) -> type[SimtoolEmbeddings]:
        return SimtoolEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": str(self.model_path), "device": "cpu"}


class TestSimtoolEmbeddingsUnit(_TinyModel, EmbeddingsUnitTests):
    pass


class TestSimtoolEmbeddingsIntegration(_TinyModel, EmbeddingsIntegrationTests):
    pass


def test_index_dir_applies_the_index_whitening_like_its_queries(tiny_st: Path, small_corpus: Path, tmp_path: Path):
    from simtool.index import build_index
    from simtool.reduce.workflows import whiten_index
    from simtool.retriever import Retriever

    index_dir = tmp_path / "index"
    build_index(small_corpus, index_dir, model=str(tiny_st), gpu=False, progress=False)
    whiten_index(index_dir, dim=8, power=0.5, progress=False)
    emb = SimtoolEmbeddings(index_dir=index_dir, device="cpu")
    texts = ["the red cat", "python code error", "a slow boat"]
    docs = emb.embed_documents(texts)
    assert all(type(x) is float for row in docs for x in row) and len(docs[0]) == 8
    with Retriever.load(index_dir, backend="faiss", gpu=False) as r:
        np.testing.assert_allclose(np.array(docs), r.encode(texts), atol=1e-6)
        np.testing.assert_allclose(emb.embed_query(texts[1]), r.encode(texts[1:2])[0], atol=1e-6)


def test_embed_documents_is_one_encode(tiny_st: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = SimtoolEmbeddings(str(tiny_st), device="cpu", batch_size=2)
    calls = count_encode_calls(monkeypatch, emb.embedder.encoder)
    assert len(emb.embed_documents(["a cat", "a dog", "a bird", "a fish", "red"])) == 5
    assert calls == [5]


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    from simtool.integrations import MissingExtraError

    monkeypatch.setitem(sys.modules, "langchain_core.embeddings", None)  # as if langchain-core were absent
    monkeypatch.delitem(sys.modules, "simtool.integrations.langchain")
    with pytest.raises(MissingExtraError) as info:
        importlib.import_module("simtool.integrations.langchain")
    assert "simtool[langchain]" in str(info.value) and "\n" not in str(info.value)
