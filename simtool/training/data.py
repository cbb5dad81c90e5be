"""Training data: streamed rows of a recipe's columns, seeded buffer shuffle, batches without repeats."""

from __future__ import annotations

import random
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

from simtool.corpus import detect_format, iter_json_objects, iter_lines, iter_table_rows
from simtool.errors import CorpusError


def training_columns(path: Path, recipe: str) -> tuple[str, ...]:
    """The columns a training file provides for ``recipe`` (e.g. ``("text",)`` or ``sent0, sent1[, hard_neg]``).

    Raises :class:`CorpusError` naming the file when it cannot serve the recipe (the recipe decides).
    """
    from simtool.training.recipes import get_recipe

    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory, expected a training file")
    fmt = detect_format(path)
    names = None if fmt == "txt" else _first_record_keys(path, fmt)
    if fmt != "txt" and names is None:
        raise CorpusError(f"{path}: no training rows (the file is empty)")
    return get_recipe(recipe).columns(path, fmt, names)


def _delimiter(fmt: str) -> str:
    return "\t" if fmt == "tsv" else ","


def _first_record_keys(path: Path, fmt: str) -> list[str] | None:
    """The header (CSV/TSV) or the first object's keys (JSONL); None for an empty file."""
    if fmt == "jsonl":
        return next((list(obj) for _, obj in iter_json_objects(path)), None)
    return next((row for _, row in iter_table_rows(path, _delimiter(fmt))), None)


def _table_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, {column: value})`` for the rows after the header; blank rows skipped."""
    rows = iter_table_rows(path, _delimiter(fmt))
    header = next(rows, (0, None))[1]
    if header is None:
        return
    for lineno, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CorpusError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
        yield lineno, dict(zip(header, row, strict=True))


def read_training_rows(path: str | Path, columns: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Stream the rows of a training file as tuples of ``len(columns)`` non-empty, stripped strings."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "txt":
        for _, line in iter_lines(path):
            if line.strip():
                yield (line.strip(),)
        return
    records = iter_json_objects(path) if fmt == "jsonl" else _table_records(path, fmt)
    for lineno, record in records:
        row = []
        for name in columns:
            value = record.get(name)
            if value is None:
                raise CorpusError(f"{path}:{lineno}: missing {name!r}")
            if not isinstance(value, str):
                raise CorpusError(f"{path}:{lineno}: {name!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise CorpusError(f"{path}:{lineno}: empty {name!r}")
            row.append(value.strip())
        yield tuple(row)


def scan_training_file(path: str | Path, recipe: str) -> tuple[tuple[str, ...], int]:
    """Validate the whole file for ``recipe`` before any training; return ``(columns, row_count > 0)``."""
    path = Path(path)
    columns = training_columns(path, recipe)
    n = sum(1 for _ in read_training_rows(path, columns))
    if n == 0:
        raise CorpusError(f"{path}: no training rows")
    return columns, n


def shuffled(rows: Iterator[tuple[str, ...]], buffer_size: int, rng: random.Random) -> Iterator[tuple[str, ...]]:
    """Buffer shuffle: memory ``buffer_size`` rows; a full uniform shuffle when the file fits in the buffer."""
    if buffer_size <= 1:
        yield from rows
        return
    buffer: list[tuple[str, ...]] = []
    for row in rows:
        if len(buffer) < buffer_size:
            buffer.append(row)
            continue
        j = rng.randrange(buffer_size)
        yield buffer[j]
        buffer[j] = row
    rng.shuffle(buffer)
    yield from buffer


def batches_without_duplicates(rows: Iterator[tuple[str, ...]], batch_size: int) -> Iterator[list[tuple[str, ...]]]:
    """Group rows into batches of exactly ``batch_size`` where no sentence (stripped) occurs in two rows.

    A row that repeats a sentence of the batch being filled waits (in order) for a later batch; rows
    still waiting at the end, and a last incomplete batch, are dropped.
    """
    waiting: deque[tuple[str, ...]] = deque()
    rows = iter(rows)
    exhausted = False
    while True:
        batch: list[tuple[str, ...]] = []
        seen: set[str] = set()
        still_waiting: deque[tuple[str, ...]] = deque()

        def fits(row: tuple[str, ...], seen: set[str] = seen) -> bool:
            return not any(text in seen for text in row)

        while waiting and len(batch) < batch_size:
            row = waiting.popleft()
            if fits(row):
                batch.append(row)
                seen.update(row)
            else:
                still_waiting.append(row)
        waiting.extendleft(reversed(still_waiting))
        while len(batch) < batch_size and not exhausted:
            nxt = next(rows, None)
            if nxt is None:
                exhausted = True
            elif fits(nxt):
                batch.append(nxt)
                seen.update(nxt)
            else:
                waiting.append(nxt)
        if len(batch) < batch_size:
            return
        yield batch


def epoch_batches(
    path: str | Path,
    columns: Sequence[str],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle_buffer: int,
    global_shuffle: str | None = None,
) -> Iterator[list[tuple[str, ...]]]:
    """The batches of one epoch: deterministic in ``(seed, epoch)``, so a resumed run can skip to its position.

    ``global_shuffle`` (a memory budget such as ``"1GiB"``) replaces the buffer shuffle by a two-pass global
    shuffle of the whole file (:mod:`simtool.shuffle`) into a temporary copy, removed when the epoch ends.
    """
    if global_shuffle is not None:
        return _globally_shuffled_batches(Path(path), columns, batch_size, seed, epoch, global_shuffle)
    rng = random.Random(f"simtool-train:{seed}:{epoch}")
    return batches_without_duplicates(shuffled(read_training_rows(path, columns), shuffle_buffer, rng), batch_size)


def _globally_shuffled_batches(
    path: Path, columns: Sequence[str], batch_size: int, seed: int, epoch: int, memory: str
) -> Iterator[list[tuple[str, ...]]]:
    from simtool.shuffle import epoch_seed, shuffle_files

    with tempfile.TemporaryDirectory(prefix="simtool-epoch-") as tmp:
        copy = Path(tmp) / path.name  # same name, so the same format (and header rule) is detected
        shuffle_files([path], copy, memory=memory, seed=epoch_seed(seed, epoch), keep_header=_has_header(path))
        yield from batches_without_duplicates(read_training_rows(copy, columns), batch_size)


def _has_header(path: Path) -> bool:
    return detect_format(path) in ("csv", "tsv")
