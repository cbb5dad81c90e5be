"""Rank statistics in float64, shared by the reducers' tuning and the evals (as scipy computes them)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from simtool.errors import ParameterError


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` ``(n,)`` in float64, ties getting their average rank (scipy's ``method="average"``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Boundaries of runs of equal values; each run gets the mean of the ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    run_ranks = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation in float64; NaN when either side is constant or has fewer than 2 values."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ParameterError(f"pearson needs two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return math.nan
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    if denom == 0.0:
        return math.nan
    return max(-1.0, min(1.0, float(a @ b) / denom))


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation: Pearson of average ranks (as ``scipy.stats.spearmanr``)."""
    return pearson(rankdata(np.asarray(x)), rankdata(np.asarray(y)))
