"""Supervised SimCSE (techniques.md §6): ``sent0, sent1[, hard_neg]`` triplets; hard negatives join the softmax."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simtool.errors import CorpusError
from simtool.training.recipes import Recipe, register

SUP_COLUMNS = ("sent0", "sent1", "hard_neg")


def columns(path: Path, fmt: str, names: list[str] | None) -> tuple[str, ...]:
    """CSV/TSV/JSONL with ``sent0, sent1`` and optionally ``hard_neg``."""
    if fmt == "txt":
        raise CorpusError(
            f"{path}: simcse-sup needs CSV/TSV/JSONL with columns sent0,sent1[,hard_neg], not a .txt of sentences"
        )
    names = names or []
    missing = [c for c in SUP_COLUMNS[:2] if c not in names]
    if missing:
        raise CorpusError(
            f"{path}: simcse-sup needs columns sent0,sent1[,hard_neg]; missing {', '.join(missing)} in {names}"
        )
    return SUP_COLUMNS if "hard_neg" in names else SUP_COLUMNS[:2]


def loss_class() -> Any:
    from simtool.losses import SupSimCSELoss

    return SupSimCSELoss


def texts_per_row(cols: Sequence[str]) -> int:
    return len(cols)


RECIPE = register(Recipe("simcse-sup", columns, loss_class, texts_per_row))
