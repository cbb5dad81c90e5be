"""``senteval``: a directory of SemEval STS files (STS12–STS16).

``STS.input.<subset>.txt`` (TSV ``sentence1<TAB>sentence2``, extra columns ignored) with
``STS.gs.<subset>.txt`` (one gold score per line; an empty line marks an unscored pair, which is
skipped); 2016 names them ``STS2016.input.<subset>.txt`` / ``STS2016.gs.<subset>.txt``. Scored per
subset, over all subsets concatenated (``all``, what MTEB and SimCSE report) and as the size-weighted
mean of the per-subset scores (``wmean``, what SentEval and the whitening papers report).
"""

from __future__ import annotations

import re
from pathlib import Path

from simtool.corpus import find_data_file, iter_lines

from .base import PairColumns, StsData, StsFormatError, StsReader, make_data, parse_float, strip_gz

_SENTEVAL_INPUT = re.compile(r"^(STS|STS2016)\.input\.(.+)\.txt$")


def detect(name: str, in_directory: bool) -> bool:
    return bool(_SENTEVAL_INPUT.match(name))


def read(path: Path, split: str | None, columns: PairColumns) -> StsData:
    """``columns`` is unused: the input files have fixed columns."""
    if path.is_file():
        m = _SENTEVAL_INPUT.match(strip_gz(path.name))
        if not m:
            raise StsFormatError(f"{path}: not an STS.input.<subset>.txt file; pass the directory")
        files = [f for f in _inputs(path.parent) if f[1] == path]
        directory = path.parent
    else:
        directory = path
        files = _inputs(path)
        if not files:
            raise StsFormatError(f"{path}: no STS.input.<subset>.txt or STS2016.input.<subset>.txt files")
    rows: list[tuple[str, str, float]] = []
    subsets: dict[str, range] = {}
    for subset, input_file, gold_file in files:
        start = len(rows)
        rows.extend(_read_subset(input_file, gold_file))
        subsets[subset] = range(start, len(rows))
    implied = "train" if "train" in directory.name.lower() else "test"
    return make_data(path, "senteval", _task(directory, files), split or implied, rows, subsets)


def _inputs(directory: Path) -> list[tuple[str, Path, Path]]:
    """``(subset, input file, gold file)`` for every ``STS[2016].input.<subset>.txt[.gz]``, by subset name."""
    found = []
    for p in sorted(directory.iterdir()):
        m = _SENTEVAL_INPUT.match(strip_gz(p.name))
        if m and p.is_file():
            prefix, subset = m.groups()
            gold = find_data_file(directory, f"{prefix}.gs.{subset}.txt")
            if gold is None:
                raise StsFormatError(f"{p}: no gold file {prefix}.gs.{subset}.txt beside it")
            found.append((subset, p, gold))
    return found


def _task(directory: Path, files: list[tuple[str, Path, Path]]) -> str:
    m = re.match(r"STS(1[2-6])", directory.name, re.IGNORECASE)
    if m:
        return f"STS{m.group(1)}"
    if files and files[0][1].name.startswith("STS2016."):
        return "STS16"
    return directory.name


def _read_subset(input_file: Path, gold_file: Path) -> list[tuple[str, str, float]]:
    inputs = list(iter_lines(input_file))
    golds = list(iter_lines(gold_file))
    if len(inputs) != len(golds):
        raise StsFormatError(f"{gold_file}: {len(golds)} lines, but {input_file.name} has {len(inputs)}")
    rows = []
    for (lineno, line), (_, gold) in zip(inputs, golds, strict=True):
        if not gold.strip():
            continue  # unscored pair
        fields = line.split("\t")
        if len(fields) < 2:
            raise StsFormatError(f"{input_file}:{lineno}: expected sentence1<TAB>sentence2")
        rows.append((fields[0], fields[1], parse_float(gold_file, lineno, gold.strip(), "gold score")))
    return rows


READER = StsReader("senteval", detect, read)
