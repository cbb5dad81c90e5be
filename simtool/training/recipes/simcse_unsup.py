"""Unsupervised SimCSE (techniques.md §6): one column of sentences, each encoded twice; dropout is the augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simtool.errors import CorpusError
from simtool.training.recipes import Recipe, register


def columns(path: Path, fmt: str, names: list[str] | None) -> tuple[str, ...]:
    """``.txt`` (one sentence per line) or CSV/TSV/JSONL with a ``text`` column."""
    if fmt == "txt" or (names is not None and "text" in names):
        return ("text",)
    hint = "; these look like supervised triplets: use --recipe simcse-sup" if names and "sent1" in names else ""
    raise CorpusError(
        f"{path}: simcse-unsup reads one sentence per line (.txt) or a 'text' column; found {list(names or [])}{hint}"
    )


def loss_class() -> Any:
    from simtool.losses import UnsupSimCSELoss

    return UnsupSimCSELoss


def texts_per_row(cols: Sequence[str]) -> int:
    return 2  # each sentence is encoded twice


RECIPE = register(Recipe("simcse-unsup", columns, loss_class, texts_per_row))
