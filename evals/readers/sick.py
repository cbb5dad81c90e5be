"""``sick``: SICK relatedness.

``SICK_train.txt``, ``SICK_trial.txt``, ``SICK_test_annotated.txt`` or the full ``SICK.txt``
(``SemEval_set`` column). Splits ``train``, ``trial``, ``test`` or ``all`` (the union, MTEB's SICK-R,
the default for a directory or ``SICK.txt``).
"""

from __future__ import annotations

import re
from pathlib import Path

from simtool.corpus import find_data_file

from .base import (
    DEV_ALIASES,
    PairColumns,
    StsData,
    StsFormatError,
    StsReader,
    check_implied_split,
    make_data,
    parse_float,
    read_header,
    strip_gz,
    tsv_rows,
)

SICK_SPLIT_FILES = {
    "train": ("SICK_train.txt",),
    "trial": ("SICK_trial.txt",),
    "test": ("SICK_test_annotated.txt", "SICK_test.txt"),
}
_SICK_FILE = re.compile(r"^SICK(_\w+)?\.txt$", re.IGNORECASE)


def detect(name: str, in_directory: bool) -> bool:
    return bool(_SICK_FILE.match(name))


def _split(requested: str | None) -> str:
    split = requested or "all"
    if split in DEV_ALIASES:
        split = "trial"
    if split not in ("train", "trial", "test", "all"):
        raise StsFormatError(f"SICK split must be train, trial, test or all, got {requested!r}")
    return split


def read(path: Path, split: str | None, columns: PairColumns) -> StsData:
    """``columns`` is unused: SICK's columns have fixed names."""
    if path.is_file():
        name = strip_gz(path.name).lower()
        implied = next((s for s, files in SICK_SPLIT_FILES.items() if name in (f.lower() for f in files)), None)
        if implied is not None:
            split = check_implied_split(path, implied, split and _split(split))
            return make_data(path, "sick", "SICK-R", split, _read_file(path, None), None)
        want = _split(split)
        return make_data(path, "sick", "SICK-R", want, _read_file(path, want), None)
    want = _split(split)
    full = find_data_file(path, "SICK.txt")
    if full is not None:
        return make_data(path, "sick", "SICK-R", want, _read_file(full, want), None)
    rows: list[tuple[str, str, float]] = []
    for name in ("train", "trial", "test") if want == "all" else (want,):
        file = next((f for f in (find_data_file(path, n) for n in SICK_SPLIT_FILES[name]) if f is not None), None)
        if file is None:
            raise StsFormatError(f"{path}: no {SICK_SPLIT_FILES[name][0]} (nor SICK.txt) for split {name!r}")
        rows.extend(_read_file(file, None))
    return make_data(path, "sick", "SICK-R", want, rows, None)


def _read_file(path: Path, split: str | None) -> list[tuple[str, str, float]]:
    """Rows of one SICK file; ``split`` filters on ``SemEval_set`` (``all`` keeps every row)."""
    lines = tsv_rows(path)
    required = ["sentence_A", "sentence_B", "relatedness_score"] + (["SemEval_set"] if split else [])
    cols = read_header(path, lines, required)
    need = max(cols[c] for c in required) + 1
    rows = []
    for lineno, fields in lines:
        if len(fields) < need:
            raise StsFormatError(f"{path}:{lineno}: expected at least {need} tab-separated fields, got {len(fields)}")
        if split and split != "all" and fields[cols["SemEval_set"]].strip().lower() != split:
            continue
        score = parse_float(path, lineno, fields[cols["relatedness_score"]])
        rows.append((fields[cols["sentence_A"]], fields[cols["sentence_B"]], score))
    return rows


READER = StsReader("sick", detect, read)
