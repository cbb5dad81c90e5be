"""``cn``: the Chinese STS sets (ATEC, BQ, LCQMC, PAWSX, STS-B).

``<TASK>.<split>.data``: TSV ``s1<TAB>s2<TAB>label``. ``path`` is the file or the task's directory
(split defaults to ``test``). STS-B is reported under C-MTEB's name, ``STSB``.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import (
    DEV_ALIASES,
    PairColumns,
    StsData,
    StsFormatError,
    StsReader,
    check_implied_split,
    make_data,
    parse_float,
    strip_gz,
    tsv_rows,
)

CN_TASK_NAMES = {"STS-B": "STSB"}  # C-MTEB's name for the Chinese STS-B
_CN_FILE = re.compile(r"^(.+)\.([^.]+)\.data$")


def detect(name: str, in_directory: bool) -> bool:
    """A directory needs a ``<TASK>.<split>.data`` file; a file only the ``.data`` ending."""
    return bool(_CN_FILE.match(name)) if in_directory else name.endswith(".data")


def _split_names(split: str) -> tuple[str, ...]:
    return ("valid", "dev", "validation") if split in DEV_ALIASES else (split,)


def read(path: Path, split: str | None, columns: PairColumns) -> StsData:
    """``columns`` is unused: the files have no header."""
    if path.is_dir():
        want = split or "test"
        files = sorted(
            p
            for p in path.iterdir()
            if (m := _CN_FILE.match(strip_gz(p.name))) and m.group(2) in _split_names(want) and p.is_file()
        )
        if not files:
            available = sorted({m.group(2) for p in path.iterdir() if (m := _CN_FILE.match(strip_gz(p.name)))})
            raise StsFormatError(f"{path}: no <TASK>.{want}.data file (splits here: {', '.join(available) or 'none'})")
        if len(files) > 1:
            raise StsFormatError(f"{path}: several {want!r} files ({', '.join(p.name for p in files)}); pass one")
        path = files[0]
    m = _CN_FILE.match(strip_gz(path.name))
    task, implied = (m.group(1), m.group(2)) if m else (path.stem, split or "test")
    implied = check_implied_split(path, implied, split, ("valid", "dev", "validation"))
    rows = []
    for lineno, fields in tsv_rows(path):
        if len(fields) < 3:
            raise StsFormatError(
                f"{path}:{lineno}: expected sentence1<TAB>sentence2<TAB>label, got {len(fields)} field(s)"
            )
        rows.append((fields[0], fields[1], parse_float(path, lineno, fields[2].strip(), "label")))
    return make_data(path, "cn", CN_TASK_NAMES.get(task, task), implied, rows, None)


READER = StsReader("cn", detect, read)
