"""``pairs``: any ``.csv``/``.tsv``/``.jsonl`` (optionally ``.gz``) with sentence1, sentence2 and score columns.

The column names are configurable (:class:`~.base.PairColumns`). CSV uses standard quoting, TSV none.
Rows with an empty score are skipped; ``split`` filters on a ``split`` column. Only a file is read:
a directory is never detected as this format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simtool.corpus import iter_json_objects, iter_table_rows

from .base import PairColumns, StsData, StsFormatError, StsReader, make_data, parse_float, strip_gz

_PAIRS_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def detect(name: str, in_directory: bool) -> bool:
    return not in_directory and name.lower().endswith(_PAIRS_SUFFIXES)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = Path(strip_gz(path.name)).suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from iter_json_objects(path)
        return
    if suffix not in (".csv", ".tsv"):
        raise StsFormatError(f"{path}: pairs files must be .csv, .tsv or .jsonl (optionally .gz)")
    rows = iter_table_rows(path, "\t" if suffix == ".tsv" else ",")
    header = next(rows, (1, None))[1]
    if header is None:
        return
    for lineno, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise StsFormatError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
        yield lineno, dict(zip(header, row, strict=False))


def read(path: Path, split: str | None, columns: PairColumns) -> StsData:
    if path.is_dir():
        raise StsFormatError(f"{path}: is a directory; the pairs format reads one .csv, .tsv or .jsonl file")
    rows = []
    keys = (columns.sentence1, columns.sentence2, columns.score)
    for lineno, rec in _records(path):
        missing = [k for k in (*keys, *(("split",) if split else ())) if k not in rec]
        if missing:
            hint = "" if missing[0] == "split" else "; set the column names (--sentence1-column etc.)"
            raise StsFormatError(f"{path}:{lineno}: no field {missing[0]!r}{hint}")
        if split and str(rec["split"]) != split:
            continue
        s1, s2, score = (rec[k] for k in keys)
        if not isinstance(s1, str) or not isinstance(s2, str):
            raise StsFormatError(f"{path}:{lineno}: sentences must be strings")
        if score is None or (isinstance(score, str) and not score.strip()):
            continue  # unscored pair
        if isinstance(score, bool) or not isinstance(score, (str, int, float)):
            raise StsFormatError(f"{path}:{lineno}: score must be a number, got {type(score).__name__}")
        rows.append((s1, s2, parse_float(path, lineno, str(score).strip())))
    task = strip_gz(path.name).rsplit(".", 1)[0]
    return make_data(path, "pairs", task, split or "all", rows, None)


READER = StsReader("pairs", detect, read)
