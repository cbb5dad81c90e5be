"""Evaluation metrics, computed as MTEB and ``trec_eval`` compute them.

STS: Pearson and Spearman (average ranks for ties) in float64, over cosine, Euclidean,
Manhattan and dot similarities of embedding pairs (computed as MTEB computes them).

Retrieval: nDCG@k, MAP@k, Recall@k, P@k (``trec_eval``'s ``ndcg_cut``, ``map_cut``,
``recall``, ``P``) and MRR@k (``recip_rank`` of the run cut at k), per query, then averaged
over the queries that are both judged and retrieved, as ``pytrec_eval`` and MTEB average.
Runs are ordered as ``trec_eval`` orders them: score descending, ties by document id
descending (byte order), whatever order the searcher returned them in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from simtool.errors import ParameterError
from simtool.stats import pearson, spearman
from simtool.stats import rankdata as rankdata  # re-exported: its home is simtool.stats

Qrels = Mapping[str, Mapping[str, int]]
"""query id -> {doc id -> graded relevance}; relevance >= 1 counts as relevant."""
Run = Mapping[str, Mapping[str, float]]
"""query id -> {doc id -> score}; higher is better."""

DEFAULT_K_VALUES = (1, 3, 5, 10, 20, 100, 1000)  # MTEB's cutoffs; those above --top-k are dropped
MRR_K_VALUES = (10,)


def pair_similarities(emb1: np.ndarray, emb2: np.ndarray) -> dict[str, np.ndarray]:
    """Row-wise similarities of two ``(n, d)`` embedding matrices, each ``(n,)``, larger = more similar.

    ``cosine`` = 1 - sklearn's paired cosine distance; ``euclidean`` and ``manhattan`` are negated
    paired distances; ``dot``. Computed in float32 for float32 input, exactly as MTEB does: the
    rounding decides which near-equal similarities tie, and Spearman over ties (many identical
    pairs in the Chinese sets) moves by up to 0.02 points if computed in float64 instead.
    """
    from sklearn.metrics.pairwise import (
        paired_cosine_distances,
        paired_euclidean_distances,
        paired_manhattan_distances,
    )

    a = np.asarray(emb1)
    b = np.asarray(emb2)
    if a.ndim != 2 or a.shape != b.shape:
        raise ParameterError(f"emb1 and emb2 must be (n, d) arrays of one shape, got {a.shape} and {b.shape}")
    return {
        "cosine": 1 - paired_cosine_distances(a, b),
        "euclidean": -paired_euclidean_distances(a, b),
        "manhattan": -paired_manhattan_distances(a, b),
        "dot": np.einsum("ij,ij->i", a, b),
    }


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float] | np.ndarray) -> dict[str, float]:
    """MTEB's STS metrics, each ×100: ``{cosine,euclidean,manhattan,dot}_{spearman,pearson}``.

    ``emb1``/``emb2`` are ``(n, d)``, ``gold`` is ``(n,)``; the main score is ``cosine_spearman``.
    """
    gold_arr = np.asarray(gold, dtype=np.float64)
    if gold_arr.shape != (len(emb1),):
        raise ParameterError(f"gold has shape {gold_arr.shape}, expected ({len(emb1)},)")
    out: dict[str, float] = {}
    for name, sims in pair_similarities(emb1, emb2).items():
        out[f"{name}_spearman"] = 100.0 * spearman(gold_arr, sims)
        out[f"{name}_pearson"] = 100.0 * pearson(gold_arr, sims)
    return out


# --------------------------------------------------------------------------- retrieval


def trec_order(scores: Mapping[str, float]) -> list[str]:
    """Document ids in ``trec_eval`` order: score descending, then id descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _query_metrics(
    judged: Mapping[str, int], ranked: list[str], k_values: Iterable[int], mrr_k_values: Iterable[int]
) -> dict[str, float]:
    relevant = {d for d, rel in judged.items() if rel >= 1}
    num_rel = len(relevant)
    gains = [float(max(judged.get(d, 0), 0)) for d in ranked]
    hits = [d in relevant for d in ranked]
    ideal = sorted((float(r) for r in judged.values() if r > 0), reverse=True)
    out: dict[str, float] = {}
    for k in k_values:
        top_gains = gains[:k]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(top_gains) if g > 0)
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"ndcg_at_{k}"] = dcg / idcg if idcg > 0 else 0.0
        found = 0
        precision_sum = 0.0
        for i, hit in enumerate(hits[:k]):
            if hit:
                found += 1
                precision_sum += found / (i + 1)
        out[f"map_at_{k}"] = precision_sum / num_rel if num_rel else 0.0
        out[f"recall_at_{k}"] = found / num_rel if num_rel else 0.0
        out[f"precision_at_{k}"] = found / k
    for k in mrr_k_values:
        first = next((i for i, hit in enumerate(hits[:k]) if hit), None)
        out[f"mrr_at_{k}"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def evaluate_run(
    qrels: Qrels,
    run: Run,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    mrr_k_values: Sequence[int] = MRR_K_VALUES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score a run against qrels; returns ``(mean over queries, per-query)``, as fractions in [0, 1].

    Only queries present in both ``qrels`` and ``run`` are scored (``trec_eval``/``pytrec_eval``
    semantics); a judged query with an empty run scores 0. Documents retrieved but not judged
    are non-relevant.
    """
    for name, ks in (("k_values", k_values), ("mrr_k_values", mrr_k_values)):
        if any(k <= 0 for k in ks):
            raise ParameterError(f"{name} must be positive cutoffs, got {tuple(ks)}")
    per_query = {
        qid: _query_metrics(qrels[qid], trec_order(run[qid]), k_values, mrr_k_values) for qid in qrels if qid in run
    }
    names = [f"{m}_at_{k}" for m in ("ndcg", "map", "recall", "precision") for k in k_values]
    names += [f"mrr_at_{k}" for k in mrr_k_values]
    n = len(per_query)
    mean = {name: (sum(q[name] for q in per_query.values()) / n if n else 0.0) for name in names}
    return mean, per_query
