"""LlamaIndex embedding adapter: real batching, same vectors as the LangChain adapter and the encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simtool.errors import SimtoolError
from simtool.integrations.llama_index import SimtoolEmbedding, SimtoolVectorStore
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


# --- SimtoolVectorStore ----------------------------------------------------------------------------------

COLOURS = ["red", "blue", "green"]


def _documents(n: int) -> list[Any]:
    from llama_index.core import Document as LiDocument

    words = ["cat", "dog", "bird", "boat", "car", "tree", "house", "fish", "python", "error"]
    return [
        LiDocument(
            text=f"{words[i % 10]} {words[(3 * i) % 10]} {COLOURS[i % 3]} number {i}",
            doc_id=f"doc{i}",
            metadata={"n": i, "colour": COLOURS[i % 3], "even": i % 2 == 0},
        )
        for i in range(n)
    ]


def _index(store: SimtoolVectorStore, docs: list[Any], embed: Any) -> Any:
    from llama_index.core import StorageContext, VectorStoreIndex

    ctx = StorageContext.from_defaults(vector_store=store)
    return VectorStoreIndex.from_documents(docs, storage_context=ctx, embed_model=embed)


@pytest.mark.timeout(120)
def test_vector_store_index_flow_delete_and_reopen(tiny_st: Path, tmp_path: Path) -> None:
    from llama_index.core import VectorStoreIndex

    embed = SimtoolEmbedding(str(tiny_st), device="cpu")
    docs = _documents(30)
    store = SimtoolVectorStore(tmp_path / "store")
    index = _index(store, docs, embed)
    by_id = {d.doc_id: d for d in docs}
    everything = index.as_retriever(similarity_top_k=100).retrieve(docs[7].text)
    assert sorted(r.node.ref_doc_id for r in everything) == sorted(by_id)  # one node per short document
    for r in everything:  # text and metadata round trip
        assert r.node.get_content() == by_id[r.node.ref_doc_id].text
        assert r.node.metadata == by_id[r.node.ref_doc_id].metadata
    # the ranking and similarities are the cosine of freshly encoded node texts, in float64
    q = np.array(embed.get_query_embedding(docs[7].text), dtype=np.float64)
    texts = [r.node.get_content(metadata_mode="embed") for r in everything]
    v = np.array(embed.get_text_embedding_batch(texts), dtype=np.float64)
    cos = v @ q / np.linalg.norm(v, axis=1) / np.linalg.norm(q)
    np.testing.assert_allclose([r.score for r in everything], cos, atol=1e-5)
    assert np.all(np.diff(cos) <= 1e-6)
    retriever = index.as_retriever(similarity_top_k=5)
    results = retriever.retrieve(docs[7].text)
    assert [r.node.node_id for r in results] == [r.node.node_id for r in everything[:5]]
    before = [(r.node.node_id, round(r.score, 5)) for r in retriever.retrieve("red dog")]

    gone = results[0].node.ref_doc_id
    index.delete_ref_doc(gone)
    after = retriever.retrieve(docs[7].text)
    assert gone not in {r.node.ref_doc_id for r in after} and len(after) == 5
    assert [r.node.node_id for r in after] == [r.node.node_id for r in everything[1:6]]
    assert store.get_nodes(filters=None, node_ids=[results[0].node.node_id]) == []
    before = [(i, s) for i, s in before if i != results[0].node.node_id]
    store.close()

    reopened = SimtoolVectorStore(tmp_path / "store")
    again = VectorStoreIndex.from_vector_store(reopened, embed_model=embed).as_retriever(similarity_top_k=5)
    got = [(r.node.node_id, round(r.score, 5)) for r in again.retrieve("red dog")]
    assert got[: len(before)] == before[: len(got)] and len(got) == 5
    reopened.close()


def _brute(filter_: Any, metas: list[dict[str, Any]]) -> set[int]:
    """LlamaIndex's own semantics (build_metadata_filter_fn), nested by hand: the reference."""
    from llama_index.core.vector_stores.types import MetadataFilters
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn

    def ok(f: Any, m: dict[str, Any]) -> bool:
        if isinstance(f, MetadataFilters):
            subs = [ok(x, m) for x in f.filters]
            cond = f.condition.value
            return all(subs) if cond == "and" else any(subs) if cond == "or" else not any(subs)
        fn = build_metadata_filter_fn(lambda _: m, MetadataFilters(filters=[f]))
        return fn("x")

    return {i for i, m in enumerate(metas) if ok(filter_, m)}


@pytest.mark.timeout(60)
def test_metadata_filters_match_llama_index_semantics(tmp_path: Path) -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import (
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
    )

    rng = np.random.default_rng(0)
    metas = [{"n": i, "colour": COLOURS[i % 3], "tag": f"t{i % 4}"} for i in range(40)]
    nodes = [
        TextNode(text=f"node {i}", id_=f"n{i}", metadata=m, embedding=rng.normal(size=8).tolist())
        for i, m in enumerate(metas)
    ]
    store = SimtoolVectorStore(tmp_path / "s")
    assert store.add(nodes) == [f"n{i}" for i in range(40)]

    def mf(key: str, op: FilterOperator, value: Any) -> MetadataFilter:
        return MetadataFilter(key=key, operator=op, value=value)

    cases = [
        MetadataFilters(filters=[mf("colour", FilterOperator.EQ, "red")]),
        MetadataFilters(filters=[mf("colour", FilterOperator.NE, "red")]),
        MetadataFilters(filters=[mf("n", FilterOperator.GT, 30)]),
        MetadataFilters(filters=[mf("n", FilterOperator.GTE, 30), mf("n", FilterOperator.LT, 35)]),
        MetadataFilters(
            filters=[mf("n", FilterOperator.LTE, 3), mf("tag", FilterOperator.IN, ["t1"])], condition=FilterCondition.OR
        ),
        MetadataFilters(filters=[mf("tag", FilterOperator.NIN, ["t0", "t2"])]),
        MetadataFilters(
            filters=[
                mf("colour", FilterOperator.IN, ["blue", "green"]),
                MetadataFilters(
                    filters=[mf("n", FilterOperator.LT, 10), mf("tag", FilterOperator.EQ, "t3")],
                    condition=FilterCondition.OR,
                ),
            ]
        ),
        MetadataFilters(
            filters=[mf("colour", FilterOperator.EQ, "red"), mf("tag", FilterOperator.IN, ["t1", "t2"])],
            condition=FilterCondition.NOT,
        ),
        MetadataFilters(
            filters=[
                MetadataFilters(
                    filters=[mf("colour", FilterOperator.EQ, "red"), mf("tag", FilterOperator.EQ, "t0")],
                    condition=FilterCondition.OR,
                )
            ],
            condition=FilterCondition.NOT,
        ),
    ]
    q = rng.normal(size=8).tolist()
    vecs = np.array([n.embedding for n in nodes], dtype=np.float64)
    cos = vecs @ np.array(q) / np.linalg.norm(vecs, axis=1) / np.linalg.norm(q)
    for f in cases:
        want = _brute(f, metas)
        res = store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=40, filters=f))
        assert {int(i[1:]) for i in res.ids} == want, f
        order = sorted(want, key=lambda i: -cos[i])
        assert res.ids == [f"n{i}" for i in order]
        np.testing.assert_allclose(res.similarities, cos[order], atol=1e-5)
        assert [n.metadata for n in res.nodes] == [metas[i] for i in order]
    res = store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=3, node_ids=["n1", "n2", "n9"]))
    assert sorted(res.ids) == ["n1", "n2", "n9"]
    with pytest.raises(SimtoolError, match="not supported"):
        store.query(
            VectorStoreQuery(query_embedding=q, filters=MetadataFilters(filters=[mf("n", FilterOperator.ANY, [1])]))
        )
    with pytest.raises(SimtoolError, match="NOT over operator"):
        bad = MetadataFilters(filters=[mf("n", FilterOperator.GT, 1)], condition=FilterCondition.NOT)
        store.query(VectorStoreQuery(query_embedding=q, filters=bad))
    store.delete_nodes(filters=cases[0])
    assert {n.metadata["colour"] for n in store.get_nodes(filters=None, node_ids=[f"n{i}" for i in range(40)])} == {
        "blue",
        "green",
    }
    store.close()


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.timeout(300)
def test_default_model_on_scifact_retrieves_the_document(shared_data: Path, tmp_path: Path) -> None:
    import json

    from llama_index.core import Document as LiDocument

    path = shared_data / "beir" / "scifact" / "corpus.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(80)]
    docs = [LiDocument(text=r["text"], doc_id=r["_id"], metadata={"title": r["title"]}) for r in rows]
    embed = SimtoolEmbedding(device="cpu")
    store = SimtoolVectorStore(tmp_path / "store")
    index = _index(store, docs, embed)
    retriever = index.as_retriever(similarity_top_k=3)
    # a document's own title finds it: MiniLM puts a paper's title nearest its abstract
    found = sum(retriever.retrieve(r["title"])[0].node.ref_doc_id == r["_id"] for r in rows[:20])
    assert found >= 15, found
    target = rows[5]
    hit = retriever.retrieve(target["title"])[0].node
    assert hit.metadata == {"title": target["title"]} and target["text"].startswith(hit.get_content()[:50])
    index.delete_ref_doc(target["_id"])
    assert target["_id"] not in {r.node.ref_doc_id for r in retriever.retrieve(target["title"])}
    store.close()


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_mmr_mode_matches_llama_index_simple_vector_store(tmp_path: Path, threshold: float | None) -> None:
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

    rng = np.random.default_rng(3)
    nodes = [TextNode(text=f"node {i}", id_=f"n{i}", embedding=rng.normal(size=8).tolist()) for i in range(30)]
    ours, reference = SimtoolVectorStore(tmp_path / "s"), SimpleVectorStore()
    ours.add(nodes)
    reference.add(nodes)
    for q in rng.normal(size=(5, 8)):
        query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, mode=VectorStoreQueryMode.MMR)
        # every node prefetched, so both run MMR over the same candidates (the reference always uses all)
        got = ours.query(query, mmr_threshold=threshold, mmr_prefetch_k=30)
        want = reference.query(query, mmr_threshold=threshold)
        assert got.ids == want.ids and len(set(got.ids)) == 5
        np.testing.assert_allclose(got.similarities, want.similarities, atol=1e-5)
        plain = ours.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5))
        assert got.ids[0] == plain.ids[0]  # MMR's first pick is the nearest node
    with pytest.raises(SimtoolError, match="hybrid"):
        ours.query(VectorStoreQuery(query_embedding=[0.0] * 8, similarity_top_k=2, mode=VectorStoreQueryMode.HYBRID))
