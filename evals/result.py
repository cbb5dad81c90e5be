"""The result of one evaluation, shared by STS and retrieval."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalResult:
    """One task on one split.

    ``main_score`` is MTEB's main score ×100 (cosine Spearman for STS, nDCG@10 for
    retrieval); ``scores`` holds every metric ×100 (plus, for retrieval, counts such as
    ``qrels_docs_missing``). ``main_metric`` names the key of ``scores`` it comes from.
    """

    task: str
    split: str
    n: int
    main_score: float
    scores: dict[str, Any]
    main_metric: str = "cosine_spearman"
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"task", "split", "n", "main_score", "scores"}``; NaN (a constant input) becomes null."""
        return {
            "task": self.task,
            "split": self.split,
            "n": self.n,
            "main_score": _finite(self.main_score),
            "scores": _finite(self.scores),
        }


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
