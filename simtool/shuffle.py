"""Global shuffle of line files far larger than memory: two passes over disk (techniques §7.2, kexue.fm/8662).

Pass 1 cuts the input into chunks that fit the memory budget, shuffles each chunk in memory
and writes it to a temp file. Pass 2 interleaves the chunk files:

- default ("rows"): rounds; each round takes the next line of every chunk, in a fresh random
  order. A shorter chunk joins a uniform random subset of the rounds (the article's rejection
  step), so its lines are spread over the whole output instead of landing at the start. With
  equal chunks every line's position is uniform; the short last chunk's lines stay slightly
  rare at the very start and end. Not every permutation is reachable (two lines of one chunk
  are never both in the first round).
- ``exact``: every output line comes from chunk i with probability (remaining lines of i) /
  (all remaining lines), which makes the permutation uniform. Drawn in blocks: the labels of
  the next B outputs are a multivariate hypergeometric draw, shuffled.

Lines are bytes and are never decoded; a last line without a newline gets one, so it cannot
merge with the line that follows it. Temp files live in one directory that is removed on
every exit, Ctrl-C included; the output is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import numpy as np

from simtool.atomic import atomic_path
from simtool.errors import SimtoolError

log = logging.getLogger(__name__)

LINE_OVERHEAD = 80  # bytes CPython spends per line held: bytes header 33, list slot 8, gather tuple 8, index 8...
MIN_MEMORY = 128  # tiny budgets are for tests; real runs use MiBs

Progress = Callable[[int], None]


@dataclass
class ShuffleReport:
    """What a shuffle did: counts, sizes (bytes) and seconds per pass."""

    lines: int = 0
    bytes: int = 0
    chunks: int = 0
    chunk_lines: list[int] = field(default_factory=list)
    max_lines_held: int = 0
    newlines_added: int = 0
    exact: bool = False
    seed: int = 0
    memory: int = 0
    split_seconds: float = 0.0
    merge_seconds: float = 0.0
    output: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("chunk_lines")
        return out


def parse_memory(text: str | int) -> int:
    """``"256MiB"``, ``"1GiB"``, ``"1.5G"``, ``"500M"``, ``"65536"`` → bytes (K/M/G are powers of 1024)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = units.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in units else s
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise SimtoolError(f"memory must be a size such as 256MiB or 1GiB, got {text!r}") from None
    return value


def _open_input(path: Path) -> IO[bytes]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned to the caller, closed there
    except OSError as e:
        raise SimtoolError(f"cannot read {path}: {e.strerror or e}") from None
    if f.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]  # reads like the BufferedReader
    return f


def _io_bytes(memory: int) -> int:
    """Size of one read batch or write buffer: 1 MiB, less under a small budget."""
    return max(4096, min(1 << 20, memory // 16))


def _batches_from_paths(
    paths: Sequence[Path], on_bytes: Progress | None, hint: int, headers: list[bytes] | None = None
) -> Iterator[list[bytes]]:
    """Batches of lines; with ``headers`` (a list to fill), each file's first line goes there instead."""
    for path in paths:
        f = _open_input(path)
        try:
            if headers is not None:
                first = f.readline()
                headers.append(first if first.endswith(b"\n") or not first else first + b"\n")
            while True:
                try:
                    batch = f.readlines(hint)
                except (OSError, EOFError, gzip.BadGzipFile) as e:
                    raise SimtoolError(f"cannot read {path}: {e}") from None
                if not batch:
                    break
                if on_bytes is not None:
                    on_bytes(sum(map(len, batch)))
                yield batch
        finally:
            f.close()


def _batches_from_lines(lines: Iterable[bytes], size: int = 8192) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            raise SimtoolError(f"lines must be bytes, got {type(line).__name__}")
        # an iterator may yield lines with or without "\n"; a bare line is one record
        batch.append(bytes(line) if line.endswith(b"\n") else bytes(line) + b"\n")
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Chunker:
    """Pass 1: collect lines until the budget is full, then write them shuffled to a temp file."""

    def __init__(self, tmp: Path, capacity: int, rng: np.random.Generator, report: ShuffleReport) -> None:
        self.tmp, self.capacity, self.rng, self.report = tmp, capacity, rng, report
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.paths: list[Path] = []

    def add(self, batch: list[bytes]) -> None:
        last = batch[-1]
        if not last.endswith(b"\n"):  # readlines returns a partial line only at end of file
            batch[-1] = last + b"\n"
            self.report.newlines_added += 1
        # cost of each line held; cut where the running total crosses the room left (one line at least)
        cost = np.cumsum(np.fromiter(map(len, batch), dtype=np.int64, count=len(batch)) + LINE_OVERHEAD)
        start, spent = 0, 0
        while start < len(batch):
            room = self.capacity - self.held_bytes
            end = int(np.searchsorted(cost, spent + room, side="left")) + 1
            end = min(max(end, start + 1), len(batch))
            self.held.extend(batch[start:end])
            self.held_bytes += int(cost[end - 1] - spent)
            spent = int(cost[end - 1])
            start = end
            if self.held_bytes >= self.capacity:
                self.flush()

    def flush(self) -> None:
        if not self.held:
            return
        if len(self.paths) >= _max_chunks():
            raise SimtoolError(
                f"memory {self.report.memory} is too small for this input: the merge would open more than "
                f"{_max_chunks()} chunk files at once; give more memory"
            )
        self.report.max_lines_held = max(self.report.max_lines_held, len(self.held))
        path = self.tmp / f"chunk-{len(self.paths):06d}"
        perm = self.rng.permutation(len(self.held))
        with open(path, "wb") as f:
            if len(perm) == 1:
                f.write(self.held[0])
            else:
                f.writelines(itemgetter(*perm.tolist())(self.held))
        self.report.chunk_lines.append(len(self.held))
        self.report.lines += len(self.held)
        self.paths.append(path)
        self.held, self.held_bytes = [], 0


def _max_chunks() -> int:
    """Chunk files the merge may hold open: the soft open-file limit, less some for everything else."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(16, (soft if soft != resource.RLIM_INFINITY else 1 << 16) - 64)


def _round_labels(remaining: np.ndarray, rng: np.random.Generator, max_lines: int) -> np.ndarray:
    """Chunk labels for the next rounds of the default interleave (about ``max_lines`` of them).

    There are R = max(remaining) rounds left; a chunk with r < R lines left joins a uniform
    random r of them (the article's rejection step, drawn directly): over the next T rounds
    it joins a hypergeometric number, placed at random. Each round's order is random.
    """
    live = np.flatnonzero(remaining)
    rem = remaining[live]
    rounds_left = int(rem.max())
    t = min(rounds_left, max(1, max_lines // len(live)))
    joins = rng.hypergeometric(rem, rounds_left - rem, t) if t < rounds_left else rem
    keys = rng.random((t, len(live)))
    mask = np.argsort(np.argsort(keys, axis=0), axis=0) < joins  # chunk i joins its joins[i] lowest-key rounds
    order = np.argsort(rng.random((t, len(live))), axis=1)
    labels = live[order]
    return labels[np.take_along_axis(mask, order, axis=1)]


def _exact_labels(remaining: np.ndarray, rng: np.random.Generator, max_lines: int) -> np.ndarray:
    """Labels of the next B outputs of a uniform random interleave: hypergeometric counts, shuffled."""
    total = int(remaining.sum())
    b = min(max_lines, total)
    counts = rng.multivariate_hypergeometric(remaining, b) if len(remaining) > 1 else np.array([b])
    labels = np.repeat(np.arange(len(remaining)), counts)
    rng.shuffle(labels)
    return labels


def _merge(
    paths: list[Path],
    counts: list[int],
    rng: np.random.Generator,
    exact: bool,
    block_lines: int,
    buffer_bytes: int,
) -> Iterator[Sequence[bytes]]:
    """Pass 2: interleave the shuffled chunk files, one block of output lines at a time."""
    remaining = np.asarray(counts, dtype=np.int64)
    next_labels = _exact_labels if exact else _round_labels
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(p, "rb", buffering=buffer_bytes)) for p in paths]
        while remaining.any():
            labels = next_labels(remaining, rng, block_lines)
            need = np.bincount(labels, minlength=len(files))
            # read each chunk's share of the block in one go, then gather into label order
            taken: list[bytes] = []
            for i in np.flatnonzero(need):
                f = files[i]
                taken.extend(f.readline() for _ in range(int(need[i])))
            order = np.argsort(labels, kind="stable")
            gather = np.empty(len(labels), dtype=np.int64)
            gather[order] = np.arange(len(labels))
            yield itemgetter(*gather.tolist())(taken) if len(taken) > 1 else taken
            remaining -= need


@contextlib.contextmanager
def _temp_dir(tmp_dir: str | os.PathLike[str] | None) -> Iterator[Path]:
    base = Path(tmp_dir) if tmp_dir is not None else None
    if base is not None and not base.is_dir():
        raise SimtoolError(f"tmp_dir {base} is not a directory")
    path = Path(tempfile.mkdtemp(prefix="simtool-shuffle-", dir=base))
    try:
        with _terminate_as_interrupt():
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while we hold temp files, so the ``finally`` clauses still run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _budget(memory: int) -> tuple[int, int, int]:
    """Split the budget: pass-1 chunk capacity, pass-2 block bytes, per-file read buffer (bytes)."""
    if memory < MIN_MEMORY:
        raise SimtoolError(f"memory must be at least {MIN_MEMORY} bytes, got {memory}")
    # pass 1 holds the chunk plus one read batch and the output buffer (memory/16 each)
    return int(memory * 0.75), int(memory * 0.4), max(4096, min(1 << 20, memory // 64))


def _shuffle_blocks(
    batches: Iterable[list[bytes]],
    *,
    memory: int,
    seed: int,
    exact: bool,
    tmp_dir: str | os.PathLike[str] | None,
    report: ShuffleReport,
) -> Iterator[Sequence[bytes]]:
    """Both passes; yields the output in blocks. Temp files go when the generator finishes or is closed."""
    capacity, block_bytes, buffer_bytes = _budget(memory)
    report.memory, report.seed, report.exact = memory, seed, exact
    rng = np.random.default_rng(seed)
    with _temp_dir(tmp_dir) as tmp:
        started = time.perf_counter()
        chunker = _Chunker(tmp, capacity, rng, report)
        for batch in batches:
            report.bytes += sum(map(len, batch))
            chunker.add(batch)
        chunker.flush()
        report.chunks = len(chunker.paths)
        report.split_seconds = time.perf_counter() - started
        log.info("shuffle: %d lines in %d chunks", report.lines, report.chunks)
        started = time.perf_counter()
        if report.lines:
            mean = max(1, report.bytes // report.lines)
            # the merge's read buffers (one per chunk) share the block's part of the budget
            left = max(block_bytes - buffer_bytes * report.chunks, block_bytes // 4)
            block_lines = max(1, left // (mean + LINE_OVERHEAD))
            yield from _merge(chunker.paths, report.chunk_lines, rng, exact, block_lines, buffer_bytes)
        report.merge_seconds = time.perf_counter() - started


def shuffle_lines(
    lines: Iterable[bytes],
    *,
    memory: int | str = "1GiB",
    seed: int = 0,
    exact: bool = False,
    tmp_dir: str | os.PathLike[str] | None = None,
    report: ShuffleReport | None = None,
) -> Iterator[bytes]:
    """Yield ``lines`` (bytes, newline added where missing) in a global random order, holding ~``memory`` bytes.

    The whole input is consumed (pass 1) before the first line comes out. Closing the
    generator early removes the temp files. ``report`` (optional) is filled in as it runs.
    """
    report = report if report is not None else ShuffleReport()
    blocks = _shuffle_blocks(
        _batches_from_lines(lines), memory=parse_memory(memory), seed=seed, exact=exact, tmp_dir=tmp_dir, report=report
    )
    for block in blocks:
        yield from block


def shuffle_files(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    memory: int | str = "1GiB",
    seed: int = 0,
    exact: bool = False,
    tmp_dir: str | os.PathLike[str] | None = None,
    compresslevel: int = 6,
    keep_header: bool = False,
    progress: bool = False,
) -> ShuffleReport:
    """Shuffle the lines of ``inputs`` (plain or gzip) into ``output`` (gzip when it ends in ``.gz``).

    ``keep_header``: each input's first line is a header (CSV/TSV); it is written once, first,
    and must be the same in every input.

    Peak memory for lines is about ``memory`` bytes; disk needs the input's uncompressed size in
    ``tmp_dir`` (default: the system temp dir). The output appears only when complete.
    Same inputs, ``memory`` and ``seed`` give the same output.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in inputs]
    if not paths:
        raise SimtoolError("inputs must name at least one file")
    for p in paths:
        if not p.is_file():
            raise SimtoolError(f"cannot read {p}: no such file")
    out_path = Path(output)
    if out_path.resolve() in {p.resolve() for p in paths}:
        raise SimtoolError(f"output {out_path} is also an input; write elsewhere")
    if not out_path.parent.is_dir():
        raise SimtoolError(f"output directory {out_path.parent} does not exist")
    budget = parse_memory(memory)
    report = ShuffleReport(output=str(out_path))
    total = sum(p.stat().st_size for p in paths)
    bar_kw: dict[str, Any] = {"disable": not progress, "dynamic_ncols": True, "leave": False}
    with atomic_path(out_path) as tmp_out:
        raw = open(tmp_out, "wb", buffering=_io_bytes(budget))  # noqa: SIM115 - closed below
        sink: IO[bytes] = (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0)  # type: ignore[assignment]  # GzipFile is an IO[bytes] at run time
            if out_path.name.endswith(".gz")
            else raw
        )
        try:
            with (
                tqdm(total=total, desc="shuffle: split", unit="B", unit_scale=True, **bar_kw) as bar1,
                tqdm(desc="shuffle: merge", unit="line", unit_scale=True, **bar_kw) as bar2,
            ):
                gz_input = any(_is_gzip(p) for p in paths)
                if gz_input:
                    bar1.total = None  # uncompressed size unknown
                headers: list[bytes] | None = [] if keep_header else None
                batches = _batches_from_paths(paths, bar1.update, _io_bytes(budget), headers)

                def lines_done(n: int) -> None:
                    if bar2.total is None:
                        bar2.total = report.lines
                    bar2.update(n)

                blocks = _shuffle_blocks(batches, memory=budget, seed=seed, exact=exact, tmp_dir=tmp_dir, report=report)
                first = True
                for block in blocks:
                    if first and headers:
                        _write_header(sink, headers, paths)
                    first = False
                    sink.writelines(block)
                    lines_done(len(block))
                if first and headers:  # header-only inputs
                    _write_header(sink, headers, paths)
        finally:
            sink.close()
            if not raw.closed:
                raw.close()
    log.info("shuffled %d lines into %s", report.lines, out_path)
    return report


def _write_header(sink: IO[bytes], headers: list[bytes], paths: Sequence[Path]) -> None:
    for path, header in zip(paths, headers, strict=False):
        if header != headers[0]:
            raise SimtoolError(f"{path}: its header differs from {paths[0]}'s; inputs must share one header")
    sink.write(headers[0])


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one training epoch: a pure function of ``(seed, epoch)``, so a resumed run
    re-creates the order of the epoch it stopped in."""
    return int(np.random.SeedSequence([seed, epoch, 0x5EED]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
