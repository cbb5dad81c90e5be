"""``stsb``: the STS Benchmark.

The original release ``sts-{train,dev,test}.csv``: TSV without header, no quoting; score, sentence1,
sentence2 are fields 4, 5, 6 (extra trailing fields ignored). Also sentence-transformers'
``stsbenchmark.tsv.gz`` (header with a ``split`` column). ``path`` is a file or a directory holding
them; the split defaults to ``test``.
"""

from __future__ import annotations

import re
from pathlib import Path

from simtool.corpus import find_data_file, iter_lines

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

_STSB_FILE = re.compile(r"^sts-(\w+)\.csv$", re.IGNORECASE)
_SBERT_FILE = re.compile(r"^stsbenchmark\.tsv$", re.IGNORECASE)


def detect(name: str, in_directory: bool) -> bool:
    return bool(_STSB_FILE.match(name) or _SBERT_FILE.match(name))


def read(path: Path, split: str | None, columns: PairColumns) -> StsData:
    """``columns`` is unused: both layouts have fixed columns."""
    want = split or "test"
    if want in DEV_ALIASES:
        want = "dev"
    if path.is_dir():
        file = find_data_file(path, f"sts-{want}.csv")
        if file is not None:
            return _read_original(file, want)
        sbert = find_data_file(path, "stsbenchmark.tsv")
        if sbert is not None:
            return _read_sbert(sbert, want)
        raise StsFormatError(f"{path}: no sts-{want}.csv or stsbenchmark.tsv.gz for split {want!r}")
    name = strip_gz(path.name)
    if _SBERT_FILE.match(name) or _first_line(path).startswith("split\t"):
        return _read_sbert(path, want)
    m = _STSB_FILE.match(name)
    implied = m.group(1).lower() if m else (split or path.stem)
    return _read_original(path, check_implied_split(path, implied, split and want, DEV_ALIASES))


def _first_line(path: Path) -> str:
    for _, line in iter_lines(path):
        return line
    return ""


def _read_original(path: Path, split: str) -> StsData:
    rows = []
    for lineno, fields in tsv_rows(path):
        if len(fields) < 7:
            raise StsFormatError(
                f"{path}:{lineno}: expected at least 7 tab-separated fields "
                f"(genre, file, year, id, score, sentence1, sentence2), got {len(fields)}"
            )
        rows.append((fields[5], fields[6], parse_float(path, lineno, fields[4])))
    return make_data(path, "stsb", "STSBenchmark", split, rows, None)


def _read_sbert(path: Path, split: str) -> StsData:
    lines = tsv_rows(path)
    cols = read_header(path, lines, ("split", "score", "sentence1", "sentence2"))
    need = max(cols["split"], cols["score"], cols["sentence1"], cols["sentence2"]) + 1
    rows, seen = [], set()
    for lineno, fields in lines:
        if len(fields) < need:
            raise StsFormatError(f"{path}:{lineno}: expected at least {need} tab-separated fields, got {len(fields)}")
        seen.add(fields[cols["split"]])
        if fields[cols["split"]] == split:
            score = parse_float(path, lineno, fields[cols["score"]])
            rows.append((fields[cols["sentence1"]], fields[cols["sentence2"]], score))
    if not rows:
        raise StsFormatError(f"{path}: no rows with split {split!r} (splits: {', '.join(sorted(seen)) or 'none'})")
    return make_data(path, "stsb", "STSBenchmark", split, rows, None)


READER = StsReader("stsb", detect, read)
