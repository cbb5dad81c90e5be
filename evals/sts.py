"""Semantic textual similarity scored as MTEB scores it: main score = cosine Spearman ×100.

The datasets are read by :mod:`simtool.evals.readers` (one module a format); the model is adapted by
:func:`simtool.encoder.encode_pairs` (a ``SentenceTransformer``, anything with ``encode``, or a callable).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simtool.protocols import Encoder, encoder_info

from .metrics import sts_scores
from .readers import DEFAULT_COLUMNS, PairColumns, StsData, load_sts
from .result import EvalResult

if TYPE_CHECKING:  # simtool.encoder imports torch; the evals import it only once they encode
    from simtool.encoder import AnyEncoder

MAIN_METRIC = "cosine_spearman"


def evaluate_sts_vectors(
    emb1: np.ndarray,
    emb2: np.ndarray,
    gold: Sequence[float] | np.ndarray,
    subsets: dict[str, range] | None = None,
) -> dict[str, Any]:
    """STS metrics ×100 from precomputed embeddings ``emb1``, ``emb2`` ``(n, d)`` and gold ``(n,)``.

    Keys ``{cosine,euclidean,manhattan,dot}_{spearman,pearson}`` over all pairs. With
    ``subsets`` (name -> index range), also ``subsets`` (name -> ``{"n", metrics...}``),
    ``all`` (the same as the top level: every subset concatenated) and ``wmean`` (each
    metric's per-subset value weighted by subset size).
    """
    gold_arr = np.asarray(gold, dtype=np.float64)
    scores: dict[str, Any] = sts_scores(emb1, emb2, gold_arr)
    if subsets:
        per = {}
        for name, idx in subsets.items():
            sl = slice(idx.start, idx.stop)
            per[name] = {"n": len(idx), **sts_scores(emb1[sl], emb2[sl], gold_arr[sl])}
        total = sum(len(r) for r in subsets.values())
        scores["all"] = dict(scores)
        scores["wmean"] = {
            key: sum(p["n"] * p[key] for p in per.values()) / total for key in scores["all"] if total > 0
        }
        scores["subsets"] = per
    return scores


def evaluate_sts_data(model: AnyEncoder, data: StsData, *, batch_size: int = 64, progress: bool = False) -> EvalResult:
    """Score loaded :class:`StsData` with ``model`` (see :func:`simtool.encoder.encode_sentences`)."""
    from simtool.encoder import encode_pairs, resolve_model

    model = resolve_model(model)
    emb1, emb2 = encode_pairs(model, data.sentences1, data.sentences2, batch_size=batch_size, progress=progress)
    scores = evaluate_sts_vectors(emb1, emb2, data.scores, data.subsets or None)
    info: dict[str, Any] = {"format": data.format, "path": str(data.path)}
    if isinstance(model, Encoder) and encoder_info(model).source is not None:  # from load_encoder: record it
        from simtool.backends import backend_info

        info["encode_backend"] = backend_info(model)
    return EvalResult(
        task=data.task,
        split=data.split,
        n=len(data),
        main_score=scores[MAIN_METRIC],
        scores=scores,
        main_metric=MAIN_METRIC,
        info=info,
    )


def evaluate_sts(
    model: AnyEncoder,
    path: str | Path,
    *,
    format: str = "auto",
    split: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
    columns: PairColumns = DEFAULT_COLUMNS,
) -> EvalResult:
    """Read an STS dataset and score ``model`` on it as MTEB does: main score = cosine Spearman ×100.

    ``model``: a ``SentenceTransformer``, anything with ``encode(list[str]) -> (n, d)``, a
    callable of that signature, or ``None``/a name/a path (loaded with ``load_encoder``).
    """
    data = load_sts(path, format, split, columns=columns)
    return evaluate_sts_data(model, data, batch_size=batch_size, progress=progress)
