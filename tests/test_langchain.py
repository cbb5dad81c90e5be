"""LangChain adapters: langchain-tests' own embeddings and vector-store suites, vectors equal to the index's
query encoding, and the store against brute force."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, VectorStoreIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from simtool.errors import SimtoolError
from simtool.integrations.langchain import SimtoolEmbeddings, SimtoolVectorStore
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


# --- SimtoolVectorStore ----------------------------------------------------------------------------------


class TestSimtoolVectorStoreSuite(VectorStoreIntegrationTests):
    """langchain-tests' own store suite (sync and async) over a real index directory."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[SimtoolVectorStore]:
        store = SimtoolVectorStore(self.get_embeddings(), tmp_path / "store")
        yield store
        store.close()


def _fake() -> DeterministicFakeEmbedding:
    return DeterministicFakeEmbedding(size=16)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


WORDS = ["red cat", "blue dog", "green bird", "slow boat", "fast car", "old tree", "new house", "big fish"]


def _metas(n: int) -> list[dict[str, Any]]:
    return [{"n": i, "colour": ["red", "blue", "green"][i % 3], "even": i % 2 == 0} for i in range(n)]


@pytest.mark.parametrize("distance", ["cosine", "ip", "l2"])
def test_scores_and_relevance_match_brute_force_per_distance(tmp_path: Path, distance: str) -> None:
    emb = _fake()
    store = SimtoolVectorStore.from_texts(WORDS, emb, _metas(len(WORDS)), index_dir=tmp_path / "s", distance=distance)
    docs = np.array(emb.embed_documents(WORDS), dtype=np.float64)
    q = np.array(emb.embed_query("a red thing"), dtype=np.float64)
    if distance == "cosine":
        ref = _unit(docs) @ _unit(q)
    elif distance == "ip":
        ref = docs @ q
    else:
        ref = -((docs - q) ** 2).sum(1)
    order = np.argsort(-ref, kind="stable")[:5]
    got = store.similarity_search_with_score("a red thing", k=5)
    assert [d.page_content for d, _ in got] == [WORDS[i] for i in order]
    expect = -ref[order] if distance == "l2" else ref[order]
    np.testing.assert_allclose([s for _, s in got], expect, rtol=1e-4, atol=1e-4)
    if distance == "cosine":  # the [0, 1] mapping is exact for unit vectors; these fake ones are not, elsewhere
        rel = store.similarity_search_with_relevance_scores("a red thing", k=5)
        np.testing.assert_allclose([r for _, r in rel], (1 + ref[order]) / 2, atol=1e-5)
        assert all(0.0 <= r <= 1.0 for _, r in store.similarity_search_with_relevance_scores("x", k=8))
    store.close()


def test_filter_matches_python_reference_and_persists_on_reopen(tmp_path: Path) -> None:
    from simtool.filters import matches

    emb = _fake()
    texts = [f"document number {i}" for i in range(40)]
    metas = _metas(40)
    store = SimtoolVectorStore.from_texts(texts, emb, metas, ids=[f"d{i}" for i in range(40)], index_dir=tmp_path / "s")
    filters = [
        {"colour": "red"},
        {"n": {"$gte": 10, "$lt": 20}},
        {"$or": [{"colour": {"$in": ["blue"]}}, {"even": True}]},
        {"$and": [{"colour": {"$ne": "red"}}, {"n": {"$nin": [1, 2, 4]}}]},
    ]
    before = {}
    for f in filters:
        got = store.similarity_search("document number 7", k=40, filter=f)
        assert sorted(d.id for d in got) == sorted(f"d{i}" for i, m in enumerate(metas) if matches(f, m))
        before[str(f)] = [d.id for d in got]
    store.close()
    reopened = SimtoolVectorStore(emb, tmp_path / "s", distance="l2")  # the stored distance wins
    assert reopened.distance == "cosine"
    for f in filters:
        assert [d.id for d in reopened.similarity_search("document number 7", k=40, filter=f)] == before[str(f)]
    with pytest.raises(SimtoolError, match="unknown operator"):
        reopened.similarity_search("x", filter={"n": {"$regex": "a"}})
    reopened.close()


def test_mmr_matches_langchain_helper_on_brute_force(tmp_path: Path) -> None:
    from langchain_core.vectorstores.utils import maximal_marginal_relevance

    emb = _fake()
    store = SimtoolVectorStore.from_texts(WORDS, emb, index_dir=tmp_path / "s")
    q = _unit(np.array(emb.embed_query("a red thing"), dtype=np.float32))
    docs = _unit(np.array(emb.embed_documents(WORDS), dtype=np.float32))
    top = np.argsort(-(docs @ q), kind="stable")[:6]
    pick = maximal_marginal_relevance(q, list(docs[top]), k=3, lambda_mult=0.3)
    got = store.max_marginal_relevance_search("a red thing", k=3, fetch_k=6, lambda_mult=0.3)
    assert [d.page_content for d in got] == [WORDS[top[i]] for i in pick]
    plain = [d.page_content for d in store.similarity_search("a red thing", k=3)]
    assert len(got) == 3 and plain == [WORDS[i] for i in top[:3]]
    store.close()


def test_as_retriever_and_from_documents(tmp_path: Path) -> None:
    from langchain_core.documents import Document as LcDocument

    docs = [LcDocument(page_content=w, metadata={"i": i}, id=f"w{i}") for i, w in enumerate(WORDS)]
    store = SimtoolVectorStore.from_documents(docs, _fake(), index_dir=tmp_path / "s")
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"i": {"$gt": 3}}})
    got = retriever.invoke(WORDS[5])
    assert got[0].id == "w5" and len(got) == 2 and all(d.metadata["i"] > 3 for d in got)
    assert store.get_by_ids(["w7", "nope", "w0"]) == [docs[7], docs[0]]
    store.close()


def test_store_over_a_whitened_simtool_index_searches_like_the_retriever(
    tiny_st: Path, small_corpus: Path, tmp_path: Path
) -> None:
    from simtool.index import build_index
    from simtool.reduce.workflows import whiten_index
    from simtool.retriever import Retriever

    index_dir = tmp_path / "index"
    build_index(small_corpus, index_dir, model=str(tiny_st), gpu=False, progress=False)
    whiten_index(index_dir, dim=8, power=0.5, progress=False)
    store = SimtoolVectorStore(SimtoolEmbeddings(index_dir=index_dir, device="cpu"), index_dir)
    store.add_texts(["a brand new red cat document"], ids=["new"])
    with Retriever.load(index_dir, backend="faiss", gpu=False) as r:
        for query in ("red cat", "python error"):
            ref = r.search(query, k=4)
            got = store.similarity_search_with_score(query, k=4)
            assert [d.id for d, _ in got] == [h.id for h in ref]
            np.testing.assert_allclose([s for _, s in got], [h.score for h in ref], atol=1e-5)
        assert "new" in {h.id for h in r.search("a brand new red cat document", k=3)}
    store.close()


def test_bad_input_is_a_simtool_error(tmp_path: Path) -> None:
    with pytest.raises(SimtoolError, match="distance must be one of"):
        SimtoolVectorStore(_fake(), tmp_path / "s", distance="dot")
    store = SimtoolVectorStore(_fake(), tmp_path / "s")
    with pytest.raises(SimtoolError, match="ids has 1 entries for 2 texts"):
        store.add_texts(["a", "b"], ids=["x"])
    assert not (tmp_path / "s").exists()  # nothing written by a refused call
    store.add_texts(["a"])
    other = SimtoolVectorStore(DeterministicFakeEmbedding(size=5), tmp_path / "s")
    with pytest.raises(SimtoolError, match="holds 16"):
        other.add_texts(["b"])
    with pytest.raises(SimtoolError, match="index_dir"):
        SimtoolVectorStore.from_texts(["a"], _fake())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("keep me")
    with pytest.raises(SimtoolError, match="not an empty directory"):
        SimtoolVectorStore(_fake(), tmp_path / "junk").add_texts(["a"])
    assert (tmp_path / "junk" / "x.txt").read_text() == "keep me"
    store.close()
    other.close()


@pytest.mark.timeout(120)
def test_threads_adding_and_searching_one_store(tmp_path: Path) -> None:
    emb = _fake()
    store = SimtoolVectorStore(emb, tmp_path / "s")
    n_threads, per_thread = 4, 6
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for j in range(per_thread):
                doc_id = f"t{t}-{j}"
                store.add_texts([f"text {doc_id}"], [{"t": t, "j": j}], ids=[doc_id])
                got = store.similarity_search(f"text {doc_id}", k=1)  # its own write is visible at once
                assert got[0].id == doc_id, (doc_id, got)
                assert len(store.similarity_search("text", k=3, filter={"t": t})) == min(3, j + 1)
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    ids = [f"t{t}-{j}" for t in range(n_threads) for j in range(per_thread)]
    assert sorted(d.id for d in store.get_by_ids(ids)) == sorted(ids)
    assert len(store.similarity_search("text", k=100)) == len(ids)
    store.close()


@pytest.mark.timeout(120)
async def test_concurrent_async_upserts_and_deletes_end_consistent(tmp_path: Path) -> None:
    import asyncio

    store = SimtoolVectorStore(_fake(), tmp_path / "s")
    await asyncio.gather(*(store.aadd_texts([f"v{i}"], [{"i": i}], ids=[f"k{i % 4}"]) for i in range(12)))
    got = await store.aget_by_ids([f"k{i}" for i in range(4)])
    assert len(got) == 4 and all(d.page_content == f"v{d.metadata['i']}" for d in got)
    await asyncio.gather(store.adelete(["k0", "k1"]), store.adelete(["k2"]))
    assert [d.id for d in await store.asimilarity_search("v", k=10)] == ["k3"]
    store.close()


@pytest.mark.timeout(120)
def test_several_stores_racing_to_create_one_directory_lose_nothing(tmp_path: Path) -> None:
    """Separate stores (own locks, as separate processes would be) all make the first add at once."""
    n = 4
    stores = [SimtoolVectorStore(_fake(), tmp_path / "s") for _ in range(n)]
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def first_add(i: int) -> None:
        try:
            barrier.wait()
            stores[i].add_texts([f"from store {i}"], ids=[f"s{i}"])
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=first_add, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for store in stores:
        store.refresh()
        assert sorted(d.id for d in store.similarity_search("store", k=10)) == [f"s{i}" for i in range(n)]
        store.close()
