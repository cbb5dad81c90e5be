"""Retrieval scoring through simtool's own index (tiny real BERT, real FAISS), checked against pytrec_eval."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
from sentence_transformers import SentenceTransformer

from simtool.encoder import load_encoder
from simtool.errors import SimtoolError
from simtool.evals.retrieval import evaluate_retrieval
from tests.conftest import WORDS, write_jsonl
from tests.conftest import run_cli as run

N_DOCS, N_QUERIES, TOP_K = 60, 20, 20


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: query i is a few words of document i; one judged doc is absent, one judged query has no text."""
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("beir") / "toy"
    (root / "qrels").mkdir(parents=True)
    docs = [
        {"_id": f"d{i}", "title": f"{WORDS[i % len(WORDS)]}", "text": " ".join(rng.choices(WORDS, k=12))}
        for i in range(N_DOCS)
    ]
    write_jsonl(root / "corpus.jsonl", docs)
    queries = [{"_id": f"q{i}", "text": " ".join(docs[i]["text"].split()[:4])} for i in range(N_QUERIES)]
    write_jsonl(root / "queries.jsonl", queries)
    lines = ["query-id\tcorpus-id\tscore"]
    for i in range(N_QUERIES):
        lines.append(f"q{i}\td{i}\t{1 + i % 2}")
        lines.append(f"q{i}\td{(i + 7) % N_DOCS}\t1")
    lines += ["q3\tghost-doc\t1", "q-without-text\td5\t1", "q4\td30\t0"]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_st: Path) -> SentenceTransformer:
    return load_encoder(tiny_st, device="cpu")


def _independent_run(model: SentenceTransformer, beir: Path) -> tuple[dict, dict]:
    """Exact search written out in numpy, and the qrels, both as pytrec_eval wants them."""
    docs = [json.loads(line) for line in (beir / "corpus.jsonl").read_text().splitlines()]
    queries = {q["_id"]: q["text"] for q in map(json.loads, (beir / "queries.jsonl").read_text().splitlines())}
    d = model.encode([f"{x['title']} {x['text']}".strip() for x in docs], convert_to_numpy=True)
    qrels: dict[str, dict[str, int]] = {}
    for line in (beir / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, rel = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(rel)
    qids = [q for q in qrels if q in queries]
    scores = model.encode([queries[q] for q in qids], convert_to_numpy=True) @ d.T
    run = {}
    for qid, row in zip(qids, scores, strict=True):
        top = np.argsort(-row)[:TOP_K]
        run[qid] = {docs[j]["_id"]: float(row[j]) for j in top}
    return qrels, run


@pytest.fixture(scope="module")
def flat_result(tiny_model: SentenceTransformer, beir: Path):
    return evaluate_retrieval(beir, model=tiny_model, top_k=TOP_K)


def test_flat_pipeline_matches_pytrec_eval_on_an_independent_exact_search(
    flat_result, tiny_model: SentenceTransformer, beir: Path
) -> None:
    qrels, run = _independent_run(tiny_model, beir)
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map_cut.10", "recall.5", "P.3"}).evaluate(run)
    mean = {m: 100 * np.mean([v[m] for v in ref.values()]) for m in ("ndcg_cut_10", "map_cut_10", "recall_5", "P_3")}
    s = flat_result.scores
    assert flat_result.main_score == s["ndcg_at_10"] == pytest.approx(mean["ndcg_cut_10"], abs=1e-6)
    assert s["map_at_10"] == pytest.approx(mean["map_cut_10"], abs=1e-6)
    assert s["recall_at_5"] == pytest.approx(mean["recall_5"], abs=1e-6)
    assert s["precision_at_3"] == pytest.approx(mean["P_3"], abs=1e-6)
    assert "ndcg_at_100" not in s  # cutoffs above --top-k are not reported
    assert 0 < flat_result.main_score < 100


def test_missing_judged_docs_and_queries_are_counted_not_fatal(flat_result) -> None:
    assert flat_result.scores["qrels_docs_missing"] == 1  # ghost-doc
    assert flat_result.scores["qrels_queries_missing"] == 1  # q-without-text
    assert flat_result.n == N_QUERIES
    assert (flat_result.task, flat_result.split) == ("toy", "test")
    assert flat_result.info["factory"] == "Flat" and flat_result.info["index_built"] is True


def test_existing_index_dir_is_reused_and_checked(
    tiny_model: SentenceTransformer, tiny_bert: Path, beir: Path, tmp_path: Path, flat_result
) -> None:
    idx = tmp_path / "idx"
    first = evaluate_retrieval(beir, model=tiny_model, index_dir=idx, top_k=TOP_K)
    assert first.info["index_built"] is True and (idx / "manifest.json").exists()
    again = evaluate_retrieval(beir, index_dir=idx, top_k=TOP_K)
    assert again.info["index_built"] is False
    assert again.scores == first.scores == flat_result.scores
    with pytest.raises(SimtoolError, match="factory applies only when building"):
        evaluate_retrieval(beir, index_dir=idx, factory="HNSW8,Flat")
    with pytest.raises(SimtoolError, match="fingerprint"):
        evaluate_retrieval(beir, index_dir=idx, model=load_encoder(tiny_bert, pooling="cls", device="cpu"))


def test_ann_index_is_what_gets_scored_and_flat_is_reported_beside_it(
    tiny_model: SentenceTransformer, beir: Path, flat_result
) -> None:
    # IVF with 8 lists, visiting 1: approximate on purpose.
    result = evaluate_retrieval(
        beir, model=tiny_model, factory="IVF8,Flat", top_k=TOP_K, compare_flat=True, search_params={"nprobe": 1}
    )
    assert result.info["factory"] == "IVF8,Flat" and result.info["search_params"]["nprobe"] == 1
    flat = {k: v for k, v in flat_result.scores.items() if not k.startswith("qrels_")}
    assert result.scores["flat"] == pytest.approx(flat, abs=1e-9)
    assert result.scores["recall_at_20"] < result.scores["flat"]["recall_at_20"]


def test_reduced_index_is_scored_through_its_reducers(
    tiny_model: SentenceTransformer, beir: Path, tmp_path: Path
) -> None:
    from simtool.reduce.workflows import whiten_index

    idx = tmp_path / "idx"
    full = evaluate_retrieval(beir, model=tiny_model, index_dir=idx, top_k=TOP_K)
    whiten_index(idx, dim=2, progress=False)
    reduced = evaluate_retrieval(beir, index_dir=idx, top_k=TOP_K, compare_flat=True)
    assert reduced.info["reducers"] and reduced.info["index_built"] is False
    assert reduced.scores["flat"]["ndcg_at_10"] == pytest.approx(full.main_score, abs=1e-9)
    assert reduced.main_score != pytest.approx(full.main_score, abs=1e-6)  # 2 dims cannot rank like 32


def test_ignore_identical_ids(tiny_model: SentenceTransformer, tmp_path: Path) -> None:
    # ArguAna-style: every query is also a document with the same id and text.
    root = tmp_path / "arguana"
    (root / "qrels").mkdir(parents=True)
    rng = random.Random(1)
    docs = [{"_id": f"a{i}", "text": " ".join(rng.choices(WORDS, k=8))} for i in range(30)]
    write_jsonl(root / "corpus.jsonl", docs)
    write_jsonl(root / "queries.jsonl", [{"_id": d["_id"], "text": d["text"]} for d in docs[:10]])
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"a{i}\ta{i + 10}\t1\n" for i in range(10))
    )
    plain = evaluate_retrieval(root, model=tiny_model, top_k=10)
    dropped = evaluate_retrieval(root, model=tiny_model, top_k=10, ignore_identical_ids=True)
    assert plain.scores["precision_at_1"] == 0.0  # the query itself is always the top hit
    assert dropped.scores["mrr_at_10"] > plain.scores["mrr_at_10"]
    assert dropped.task == "ArguAna"


def test_top_k_below_10_is_refused(beir: Path) -> None:
    with pytest.raises(SimtoolError, match="top_k must be at least 10"):
        evaluate_retrieval(beir, top_k=5)


def test_cli_json_and_text(capsys: pytest.CaptureFixture[str], tiny_st: Path, beir: Path, flat_result) -> None:
    code, out, err = run(
        capsys, "eval", "retrieval", str(beir), "--model", str(tiny_st), "--top-k", str(TOP_K), "--json"
    )
    assert code == 0, err
    (line,) = out.splitlines()
    obj = json.loads(line)
    assert set(obj) == {"task", "split", "n", "main_score", "scores", "encode_backend"}
    assert obj["main_score"] == pytest.approx(flat_result.main_score)
    assert obj["scores"]["qrels_docs_missing"] == 1
    assert "encode" not in err  # progress bars stay quiet under --json
    code, out, err = run(
        capsys, "eval", "retrieval", str(beir), "--model", str(tiny_st), "--top-k", str(TOP_K), "--compare-flat"
    )
    assert code == 0, err
    assert "nDCG" in out and "main score (nDCG@10 x100)" in out and "flat" in out
    assert "1 judged document id(s) are not in the index" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "dev"], "qrels/dev.tsv: no such qrels file (splits here: test)"),
        (["--top-k", "3"], "--top-k must be at least 10"),
        (["--factory", "Bogus99"], "--factory Bogus99 is unknown or invalid"),
        (["--nprobe", "0"], "--nprobe must be positive"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, beir: Path, args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "eval", "retrieval", str(beir), "--model", str(tiny_st), *args, "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_cli_not_a_beir_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", "retrieval", str(tmp_path), "--json")
    assert code == 2 and f"{tmp_path}: no corpus.jsonl" in err and err.count("\n") == 1
