"""Evaluation scored exactly as MTEB scores it: STS (read by :mod:`.readers`, scored by :mod:`.sts`), BEIR
retrieval through simtool's index (:mod:`.retrieval`), trec_eval metrics (:mod:`.metrics`) and named suites
with reference deltas (:mod:`.suites`)."""

from __future__ import annotations

from .readers import StsData, load_sts
from .result import EvalResult
from .retrieval import evaluate_retrieval, load_beir
from .sts import evaluate_sts, evaluate_sts_vectors
from .suites import run_suite

__all__ = [
    "EvalResult",
    "StsData",
    "evaluate_retrieval",
    "evaluate_sts",
    "evaluate_sts_vectors",
    "load_beir",
    "load_sts",
    "run_suite",
]
