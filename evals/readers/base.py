"""What every STS reader shares: the loaded data, the reader record the registry holds, and line-level helpers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simtool.corpus import iter_lines
from simtool.errors import SimtoolError

# Names used elsewhere for the same split, mapped to each format's own name.
DEV_ALIASES = ("dev", "valid", "validation")


class StsFormatError(SimtoolError):
    """An STS file or directory cannot be read; the message names it."""


@dataclass
class StsData:
    """Sentence pairs with gold scores.

    ``scores`` is ``(n,)`` float64. ``subsets`` maps a subset name (senteval) to the range of
    pair indices it occupies; empty for single-set formats.
    """

    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    task: str
    split: str
    format: str
    path: Path
    subsets: dict[str, range] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class PairColumns:
    """Column (or JSON key) names for the ``pairs`` format."""

    sentence1: str = "sentence1"
    sentence2: str = "sentence2"
    score: str = "score"


DEFAULT_COLUMNS = PairColumns()


@dataclass(frozen=True)
class StsReader:
    """One STS format, as the registry in :mod:`simtool.evals.readers` holds it.

    ``detect(name, in_directory)``: whether a file called ``name`` (``.gz`` already stripped) marks
    this format, either as the path given (``in_directory=False``) or as one file of the directory
    given (``True``). ``read(path, split, columns)`` loads ``path`` (a file or a directory; ``split``
    ``None`` means the format's default); ``columns`` is read only by formats with named columns.
    """

    name: str
    detect: Callable[[str, bool], bool]
    read: Callable[[Path, str | None, PairColumns], StsData]


def strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def parse_float(path: Path, lineno: int, value: str, what: str = "score") -> float:
    try:
        x = float(value)
    except ValueError:
        raise StsFormatError(f"{path}:{lineno}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise StsFormatError(f"{path}:{lineno}: {what} {value!r} is not finite")
    return x


def tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank lines split on tabs, with no quoting at all (``csv.QUOTE_NONE``)."""
    for lineno, line in iter_lines(path):
        if line.strip():
            yield lineno, line.split("\t")


def make_data(
    path: Path, fmt: str, task: str, split: str, rows: list[tuple[str, str, float]], subsets: dict[str, range] | None
) -> StsData:
    return StsData(
        sentences1=[r[0] for r in rows],
        sentences2=[r[1] for r in rows],
        scores=np.array([r[2] for r in rows], dtype=np.float64),
        task=task,
        split=split,
        format=fmt,
        path=path,
        subsets=subsets or {},
    )


def check_implied_split(path: Path, implied: str, requested: str | None, aliases: Sequence[str] = ()) -> str:
    if requested is not None and requested != implied and not (requested in aliases and implied in aliases):
        raise StsFormatError(f"{path}: this file holds the {implied!r} split, not {requested!r}")
    return implied


def read_header(path: Path, lines: Iterator[tuple[int, list[str]]], required: Sequence[str]) -> dict[str, int]:
    try:
        lineno, header = next(lines)
    except StopIteration:
        raise StsFormatError(f"{path}: empty file") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise StsFormatError(f"{path}:{lineno}: header has no column {missing[0]!r} (header: {header})")
    return {name: i for i, name in enumerate(header)}
