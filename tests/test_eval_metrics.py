"""Metric functions against their references: scipy (correlations), sklearn (MTEB's similarities), pytrec_eval."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import pytrec_eval
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics.pairwise import paired_cosine_distances, paired_euclidean_distances

from simtool.errors import ParameterError
from simtool.evals.metrics import evaluate_run, pearson, rankdata, spearman, sts_scores, trec_order
from simtool.evals.sts import evaluate_sts_vectors

# --------------------------------------------------------------------------- correlations


def test_rankdata_averages_ties_like_scipy() -> None:
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    np.testing.assert_array_equal(rankdata(x), scipy.stats.rankdata(x))
    assert rankdata(x).tolist() == [5.0, 1.5, 5.0, 3.0, 5.0, 1.5]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.floats(-1, 1, allow_nan=False, width=32)),
        min_size=3,
        max_size=60,
    )
)
def test_spearman_and_pearson_match_scipy(pairs: list[tuple[int, float]]) -> None:
    gold = np.array([p[0] for p in pairs], dtype=np.float64)
    pred = np.array([p[1] for p in pairs], dtype=np.float64)
    if np.ptp(gold) == 0 or np.ptp(pred) == 0:
        assert math.isnan(spearman(gold, pred)) and math.isnan(pearson(gold, pred))
        return
    assert spearman(gold, pred) == pytest.approx(scipy.stats.spearmanr(gold, pred)[0], abs=1e-12)
    assert pearson(gold, pred) == pytest.approx(scipy.stats.pearsonr(gold, pred)[0], abs=1e-12)


def test_spearman_known_value() -> None:
    # d = rank differences (0, 0, -1, 1, 0): rho = 1 - 6*2 / (5*24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [10, 20, 40, 30, 50]) == pytest.approx(0.9)


def test_sts_scores_are_mteb_float32_similarities() -> None:
    rng = np.random.default_rng(0)
    e1 = rng.normal(size=(50, 8)).astype(np.float32)
    e2 = (e1 + rng.normal(scale=0.7, size=e1.shape)).astype(np.float32)
    gold = rng.integers(0, 6, size=50).astype(np.float64)
    scores = sts_scores(e1, e2, gold)
    cos = 1 - paired_cosine_distances(e1, e2)
    assert scores["cosine_spearman"] == pytest.approx(100 * scipy.stats.spearmanr(gold, cos)[0], abs=1e-9)
    assert scores["cosine_pearson"] == pytest.approx(100 * scipy.stats.pearsonr(gold, cos)[0], abs=1e-9)
    euc = -paired_euclidean_distances(e1, e2)
    assert scores["euclidean_spearman"] == pytest.approx(100 * scipy.stats.spearmanr(gold, euc)[0], abs=1e-9)
    dot = (e1.astype(np.float64) * e2).sum(axis=1)
    assert scores["dot_spearman"] == pytest.approx(100 * scipy.stats.spearmanr(gold, dot)[0], abs=1e-4)
    assert set(scores) == {
        f"{s}_{c}" for s in ("cosine", "euclidean", "manhattan", "dot") for c in ("spearman", "pearson")
    }


def test_sts_vectors_all_is_concatenation_and_wmean_is_size_weighted() -> None:
    rng = np.random.default_rng(1)
    e1 = rng.normal(size=(30, 6)).astype(np.float32)
    e2 = (e1 + rng.normal(size=e1.shape)).astype(np.float32)
    gold = rng.uniform(0, 5, size=30)
    subsets = {"a": range(0, 10), "b": range(10, 30)}
    scores = evaluate_sts_vectors(e1, e2, gold, subsets)
    cos = 1 - paired_cosine_distances(e1, e2)
    expected_all = 100 * scipy.stats.spearmanr(gold, cos)[0]
    assert scores["all"]["cosine_spearman"] == pytest.approx(expected_all)
    assert scores["cosine_spearman"] == scores["all"]["cosine_spearman"]
    per = [100 * scipy.stats.spearmanr(gold[r.start : r.stop], cos[r.start : r.stop])[0] for r in subsets.values()]
    assert scores["subsets"]["a"]["cosine_spearman"] == pytest.approx(per[0])
    assert scores["subsets"]["b"]["n"] == 20
    assert scores["wmean"]["cosine_spearman"] == pytest.approx((10 * per[0] + 20 * per[1]) / 30)
    assert scores["wmean"]["cosine_spearman"] != pytest.approx(scores["all"]["cosine_spearman"])


# --------------------------------------------------------------------------- retrieval

K_VALUES = (1, 3, 5, 10, 100)


def _pytrec(qrels: dict, run: dict, k_values: tuple[int, ...] = K_VALUES) -> dict[str, dict[str, float]]:
    measures = {f"{m}.{k}" for m in ("ndcg_cut", "map_cut", "recall", "P") for k in k_values}
    return pytrec_eval.RelevanceEvaluator(qrels, measures | {"recip_rank"}).evaluate(run)


def _assert_same(ours: dict[str, dict[str, float]], ref: dict[str, dict[str, float]], k_values=K_VALUES) -> None:
    assert set(ours) == set(ref)
    names = {"ndcg_at": "ndcg_cut", "map_at": "map_cut", "recall_at": "recall", "precision_at": "P"}
    for qid in ref:
        for ours_name, trec_name in names.items():
            for k in k_values:
                assert ours[qid][f"{ours_name}_{k}"] == pytest.approx(ref[qid][f"{trec_name}_{k}"], abs=1e-12), (
                    qid,
                    ours_name,
                    k,
                )


def test_trec_order_breaks_ties_by_docid_descending() -> None:
    assert trec_order({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5, "d": 2.0}) == ["d", "c", "b", "a", "z"]


def test_hand_made_runs_with_ties_and_missing_docs_match_pytrec_eval() -> None:
    qrels = {
        "q1": {"d1": 1, "d2": 2, "gone": 1},  # "gone" is never retrieved (missing from the corpus)
        "q2": {"d3": 1, "d4": 0},  # d4 judged non-relevant
        "q3": {"d5": 1},  # empty run
        "q4": {"d6": 0},  # no relevant document at all
        "q5": {"d7": 3, "d8": 1},
    }
    run = {
        "q1": {"d9": 0.9, "d1": 0.9, "d2": 0.9, "d0": 0.5},  # a three-way tie at the top
        "q2": {"d4": 0.7, "d3": 0.7, "x": 0.1},  # the tie puts d4 (larger id) first
        "q3": {},
        "q4": {"d6": 1.0, "d1": 0.3},
        "q5": {f"n{i}": 1.0 - i / 200 for i in range(120)} | {"d8": 0.2, "d7": 0.4},  # beyond rank 100
        "unjudged": {"d1": 1.0},  # not in qrels: not scored
    }
    mean, per_query = evaluate_run(qrels, run)
    ref = _pytrec(qrels, run)
    _assert_same(per_query, ref)
    assert set(per_query) == {"q1", "q2", "q3", "q4", "q5"}
    assert per_query["q2"]["precision_at_1"] == 0.0  # tie-break by id: d4 ranks first, d3 second
    assert per_query["q1"]["recall_at_10"] == pytest.approx(2 / 3)
    for name in ("ndcg_at_10", "map_at_100", "recall_at_5"):
        trec = name.replace("ndcg_at", "ndcg_cut").replace("map_at", "map_cut").replace("recall_at", "recall")
        assert mean[name] == pytest.approx(np.mean([ref[q][trec] for q in ref]))


def test_random_runs_match_pytrec_eval() -> None:
    rng = random.Random(7)
    qrels, run = {}, {}
    for q in range(150):
        docs = [f"d{i:02d}" for i in range(40)]
        judged = rng.sample([*docs, "missing-a", "missing-b"], rng.randint(1, 10))
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        # Coarse scores make ties frequent.
        run[f"q{q}"] = {d: rng.choice([0.1, 0.25, 0.5, 0.5, 0.75, 0.9]) for d in rng.sample(docs, rng.randint(0, 35))}
    _, per_query = evaluate_run(qrels, run)
    _assert_same(per_query, _pytrec(qrels, run))


def test_mrr_at_10_is_recip_rank_of_the_run_cut_at_10() -> None:
    rng = random.Random(3)
    qrels, run = {}, {}
    for q in range(100):
        docs = [f"d{i}" for i in range(30)]
        qrels[str(q)] = {d: 1 for d in rng.sample(docs, 2)}
        run[str(q)] = {d: float(rng.randint(0, 5)) for d in rng.sample(docs, 25)}
    _, per_query = evaluate_run(qrels, run, k_values=(10,), mrr_k_values=(10,))
    cut = {q: dict(sorted(r.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, r in run.items()}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    for q in qrels:
        assert per_query[q]["mrr_at_10"] == pytest.approx(ref[q]["recip_rank"])
    assert any(0 < per_query[q]["mrr_at_10"] < 1 for q in qrels)
    assert any(per_query[q]["mrr_at_10"] == 0 for q in qrels)


def test_cutoffs_must_be_positive() -> None:
    with pytest.raises(ParameterError, match=r"k_values must be positive cutoffs, got \(0,\)"):
        evaluate_run({"q": {"d": 1}}, {"q": {"d": 1.0}}, k_values=(0,))
