"""The default model on real data reproduces MTEB's published scores (../shared/data/reference).

STS-B test 82.03, Chinese STS-B test 37.80, SciFact test nDCG@10 64.51; the SciFact corpus
(5,183 documents) is encoded once for the module, into an index directory the CLI test reuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sentence_transformers import SentenceTransformer

from simtool.encoder import load_encoder
from simtool.evals.result import EvalResult
from simtool.evals.retrieval import evaluate_retrieval
from simtool.evals.sts import evaluate_sts
from tests.conftest import run_cli as run

pytestmark = [pytest.mark.reference, pytest.mark.shared_data]

STS_KEYS = ("cosine_spearman", "cosine_pearson", "euclidean_spearman", "manhattan_spearman", "manhattan_pearson")
RETRIEVAL_KEYS = ("ndcg_at_1", "ndcg_at_10", "ndcg_at_100", "map_at_10", "recall_at_10", "precision_at_10", "mrr_at_10")


def reference(shared: Path, task: str, split: str = "test") -> dict[str, Any]:
    data = json.loads((shared / "reference" / "all-MiniLM-L6-v2" / f"{task}.json").read_text())
    (entry,) = [e for e in data["scores"][split] if e["hf_subset"] == "default"]
    return entry


@pytest.fixture(scope="module")
def default_model() -> SentenceTransformer:
    return load_encoder(device="cpu")


@pytest.fixture(scope="module")
def scifact(shared_data: Path, default_model: SentenceTransformer, tmp_path_factory: pytest.TempPathFactory):
    """SciFact test scored through a Flat index built once; returns (result, index dir)."""
    index_dir = tmp_path_factory.mktemp("scifact") / "index"
    result = evaluate_retrieval(shared_data / "beir" / "scifact", model=default_model, index_dir=index_dir)
    return result, index_dir


def test_stsbenchmark_test_is_82_03(capsys: pytest.CaptureFixture[str], shared_data: Path) -> None:
    code, out, err = run(capsys, "eval", "sts", str(shared_data / "stsb" / "original"), "--json")
    assert code == 0, err
    obj = json.loads(out)
    ref = reference(shared_data, "STSBenchmark")
    assert (obj["task"], obj["split"], obj["n"]) == ("STSBenchmark", "test", 1379)
    assert round(obj["main_score"], 2) == round(100 * ref["main_score"], 2) == 82.03
    for key in STS_KEYS:
        assert obj["scores"][key] == pytest.approx(100 * ref[key], abs=0.01), key


def test_chinese_stsb_test_is_37_80(shared_data: Path, default_model: SentenceTransformer) -> None:
    result: EvalResult = evaluate_sts(default_model, shared_data / "chinese_sts" / "STS-B", split="test")
    ref = reference(shared_data, "STSB")
    assert (result.task, result.n) == ("STSB", 1361)
    # Many identical pairs tie; only MTEB's float32 similarities give its exact Spearman.
    assert round(result.main_score, 2) == round(100 * ref["main_score"], 2) == 37.80
    assert result.scores["cosine_pearson"] == pytest.approx(100 * ref["cosine_pearson"], abs=0.01)


def test_scifact_test_ndcg_at_10_is_64_51(shared_data: Path, scifact) -> None:
    result, _ = scifact
    ref = reference(shared_data, "SciFact")
    assert (result.task, result.split, result.n) == ("SciFact", "test", 300)
    assert result.info["documents"] == 5183 and result.info["factory"] == "Flat"
    assert round(result.main_score, 2) == round(100 * ref["main_score"], 2) == 64.51
    for key in RETRIEVAL_KEYS:
        assert result.scores[key] == pytest.approx(100 * ref[key], abs=0.01), key
    assert result.scores["qrels_docs_missing"] == 0 and result.scores["qrels_queries_missing"] == 0


def test_cli_reuses_the_index_and_compares_with_flat(
    capsys: pytest.CaptureFixture[str], shared_data: Path, scifact
) -> None:
    result, index_dir = scifact
    code, out, err = run(
        capsys,
        "eval",
        "retrieval",
        str(shared_data / "beir" / "scifact"),
        "--index-dir",
        str(index_dir),
        "--compare-flat",
        "--json",
    )
    assert code == 0, err
    obj = json.loads(out)
    assert obj["main_score"] == pytest.approx(result.main_score, abs=1e-9)
    assert obj["scores"]["flat"]["ndcg_at_10"] == pytest.approx(result.main_score, abs=1e-9)
