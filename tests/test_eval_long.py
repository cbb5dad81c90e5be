"""`simtool eval long`: the benchmark builders and the scores against a brute-force MaxP reference."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from simtool.evals.long import LongBenchmark, LongQuery, Method, build_pydoc, build_scifact, evaluate_long
from tests.conftest import WORDS


def test_pydoc_queries_are_unique_first_sentences_at_their_offsets() -> None:
    a, b = build_pydoc(seed=3, max_queries=50), build_pydoc(seed=3, max_queries=50)
    assert a.queries == b.queries and len(a.queries) == 50 and len(a.docs) >= 70
    assert a.queries != build_pydoc(seed=4, max_queries=50).queries
    assert len({q.text for q in a.queries}) == 50
    for q in a.queries:
        doc = a.docs[q.doc_id]
        assert " ".join(doc[q.start_char :].split()).startswith(q.text)
        assert q.start_char == 0 or doc[q.start_char - 2 : q.start_char] == "\n\n"
    assert max(q.start_char for q in a.queries) > 10_000  # passages far past any 512-token window exist


def _synthetic() -> LongBenchmark:
    rng = np.random.default_rng(11)
    docs = {f"d{i}": " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 90)) for i in range(8)}
    queries = []
    for i in range(16):
        d = f"d{i % 8}"
        words = docs[d].split()
        at = int(rng.integers(0, 80))
        queries.append(LongQuery(f"q{i}", " ".join(words[at : at + 8]), d, len(" ".join(words[:at])) + (at > 0)))
    return LongBenchmark("synthetic", docs, queries)


@pytest.mark.timeout(120)
def test_chunk_max_ndcg_matches_brute_force(tiny_st: Path) -> None:
    from simtool.chunking import encode_chunked
    from simtool.encoder import encode_texts, load_encoder

    bench = _synthetic()
    table = {"t": Method("truncate"), "cmax": Method("chunk-max"), "h128": Method("truncate", 128, 128)}
    result = evaluate_long(bench, str(tiny_st), list(table), table=table, batch_size=8)
    assert result["queries"] == 16 and sum(result["queries_by_start"].values()) == 16
    model = load_encoder(tiny_st, device="cpu")
    enc = encode_chunked(model, list(bench.docs.values()), mode="chunk-max")
    q = encode_texts(model, [x.text for x in bench.queries]).astype(np.float64)
    ids = list(bench.docs)
    ndcg = []
    for i, query in enumerate(bench.queries):
        best = {ids[d]: max(q[i] @ enc.vectors[r] for r in np.flatnonzero(enc.owners == d)) for d in range(len(ids))}
        ranked = sorted(best, key=lambda d: (-best[d], d))  # ties: any order, scores here are distinct
        rank = ranked.index(query.doc_id)
        ndcg.append(1 / math.log2(rank + 2) if rank < 10 else 0.0)
    cmax = result["methods"]["cmax"]
    assert cmax["ndcg_at_10"] == pytest.approx(100 * np.mean(ndcg), abs=1e-6)
    assert cmax["vectors"] == len(enc.vectors) > 8 and result["methods"]["t"]["vectors"] == 8
    assert cmax["index_bytes"] == enc.vectors.nbytes
    assert result["methods"]["h128"]["max_seq_length"] == 128
    with pytest.raises(Exception, match="unknown nope"):
        evaluate_long(bench, str(tiny_st), ["nope"], table=table)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_scifact_long_documents_hold_the_relevant_abstract(shared_data: Path) -> None:
    from simtool.corpus import read_documents
    from simtool.evals.retrieval import load_beir

    path = shared_data / "beir" / "scifact"
    bench = build_scifact(path, seed=1, n_queries=20, abstracts_per_doc=5)
    assert bench.queries == build_scifact(path, seed=1, n_queries=20, abstracts_per_doc=5).queries
    data = load_beir(path, "test")
    judged = {d for q in bench.queries for d in data.qrels[q.id]}
    texts = {d.encoded_text: d.id for d in read_documents(data.corpus_path)}
    slots = set()
    for q in bench.queries:
        parts = bench.docs[q.doc_id].split("\n")
        assert len(parts) == 5
        target = bench.docs[q.doc_id][q.start_char :].split("\n")[0]
        assert texts[target] in data.qrels[q.id]
        assert sum(texts[p] in judged for p in parts) == 1  # fillers are judged for no selected query
        slots.add(parts.index(target))
    assert len(slots) >= 3 and not re.search(r"\n\n", "".join(bench.docs.values()))
