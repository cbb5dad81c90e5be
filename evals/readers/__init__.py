"""STS dataset readers, one module a format, in one registry: ``load_sts(path, format=...)``.

Formats (each module's docstring has the details):

``stsb`` (:mod:`.stsb`)
    STS Benchmark: ``sts-{train,dev,test}.csv`` or sentence-transformers' ``stsbenchmark.tsv.gz``.
``senteval`` (:mod:`.senteval`)
    A directory of SemEval STS12–STS16 ``STS.input.<subset>.txt`` / ``STS.gs.<subset>.txt`` files.
``sick`` (:mod:`.sick`)
    SICK relatedness: ``SICK_{train,trial,test_annotated}.txt`` or the full ``SICK.txt``.
``cn`` (:mod:`.cn`)
    ``<TASK>.<split>.data`` (ATEC, BQ, LCQMC, PAWSX, STS-B).
``pairs`` (:mod:`.pairs`)
    Any ``.csv``/``.tsv``/``.jsonl`` with sentence1, sentence2 and score columns (names configurable).

Every file may be gzipped and may start with a UTF-8 BOM. Bad input raises
:class:`simtool.errors.SimtoolError` with one line naming the file (and line).

A new format is one module defining a :class:`~.base.StsReader` plus one entry in :data:`READERS`;
``auto`` tries the readers in the registry's order.
"""

from __future__ import annotations

from pathlib import Path

from . import cn, pairs, senteval, sick, stsb
from .base import DEFAULT_COLUMNS, PairColumns, StsData, StsFormatError, StsReader, strip_gz

# the registry: a new format adds its module's READER here; ``auto`` tries them in this order
READERS: dict[str, StsReader] = {
    r.name: r for r in (stsb.READER, senteval.READER, sick.READER, cn.READER, pairs.READER)
}
STS_FORMATS = tuple(READERS)


def detect_sts_format(path: Path) -> str:
    """The format of an STS file or directory, from file names: the first reader whose ``detect`` accepts it."""
    if path.is_dir():
        names = [strip_gz(p.name) for p in path.iterdir() if p.is_file()]
        for reader in READERS.values():
            if any(reader.detect(n, True) for n in names):
                return reader.name
        raise StsFormatError(f"{path}: cannot tell the STS format of this directory; pass --format")
    name = strip_gz(path.name)
    for reader in READERS.values():
        if reader.detect(name, False):
            return reader.name
    raise StsFormatError(f"{path}: cannot tell the STS format from this file name; pass --format")


def load_sts(
    path: str | Path,
    format: str = "auto",
    split: str | None = None,
    *,
    columns: PairColumns = DEFAULT_COLUMNS,
) -> StsData:
    """Read an STS dataset (file or directory) in one of :data:`STS_FORMATS`, or ``auto``-detected."""
    path = Path(path)
    if not path.exists():
        raise StsFormatError(f"{path}: no such file or directory")
    if format == "auto":
        format = detect_sts_format(path)
    if format not in READERS:
        raise StsFormatError(f"unknown STS format {format!r}; choose auto or one of {', '.join(STS_FORMATS)}")
    data = READERS[format].read(path, split, columns)
    if len(data) == 0:
        raise StsFormatError(f"{data.path}: no scored sentence pairs" + (f" in split {data.split!r}" if split else ""))
    return data


__all__ = [
    "DEFAULT_COLUMNS",
    "READERS",
    "STS_FORMATS",
    "PairColumns",
    "StsData",
    "StsFormatError",
    "StsReader",
    "detect_sts_format",
    "load_sts",
]
