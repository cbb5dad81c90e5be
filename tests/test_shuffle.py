"""simtool.shuffle: permutation, determinism, uniformity (chi-square), bounded memory, cleanup, CLI."""

from __future__ import annotations

import collections
import gzip
import itertools
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from simtool.errors import SimtoolError
from simtool.shuffle import ShuffleReport, parse_memory, shuffle_files, shuffle_lines
from tests.conftest import run_cli

LINES = [b"line %d\n" % i for i in range(10)]  # 8 bytes + overhead: a 1 KiB budget makes chunks of 8 lines


def temp_dirs(tmp_path: Path) -> list[str]:
    return [p for p in os.listdir(tmp_path) if p.startswith("simtool-shuffle-")]


@pytest.mark.parametrize("exact", [False, True])
def test_output_is_a_permutation_and_seeded(tmp_path: Path, exact: bool) -> None:
    lines = [b"row %d \xff\xfe raw bytes\r\n" % i for i in range(3000)] + [b"dup\n"] * 5
    rep = ShuffleReport()
    out = list(shuffle_lines(lines, memory=4096, seed=3, exact=exact, tmp_dir=tmp_path, report=rep))
    assert rep.chunks > 10  # several chunks, or the interleave would not be tested
    assert collections.Counter(out) == collections.Counter(lines)
    assert out != lines
    assert out == list(shuffle_lines(lines, memory=4096, seed=3, exact=exact, tmp_dir=tmp_path))
    assert out != list(shuffle_lines(lines, memory=4096, seed=4, exact=exact, tmp_dir=tmp_path))
    assert temp_dirs(tmp_path) == []


def _positions(exact: bool, trials: int, n: int = 10, memory: int = 800) -> np.ndarray:
    """counts[line, position] over ``trials`` seeds."""
    lines = [b"%d\n" % i for i in range(n)]
    counts = np.zeros((n, n), dtype=np.int64)
    for seed in range(trials):
        for pos, line in enumerate(shuffle_lines(lines, memory=memory, seed=seed, exact=exact)):
            counts[int(line), pos] += 1
    return counts


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("exact", "n", "chunks"), [(False, 16, [8, 8]), (True, 16, [8, 8]), (True, 10, [8, 2])])
def test_chi_square_on_positions(exact: bool, n: int, chunks: list[int]) -> None:
    """Where each line lands is uniform: for --exact always, for the default when the chunks are equal.

    (The default's short last chunk is spread by the rejection step but stays slightly rare at
    the very start and end of the output; the docstring of simtool.shuffle says so.)
    """
    rep = ShuffleReport()
    list(shuffle_lines([b"%d\n" % i for i in range(n)], memory=800, report=rep))
    assert rep.chunk_lines == chunks
    counts = _positions(exact, trials=800, n=n)
    for line in range(n):
        assert chisquare(counts[line]).pvalue > 1e-4, (line, counts[line])


def test_chi_square_detects_a_chunk_local_shuffle() -> None:
    """The same test rejects a shuffle that never mixes chunks (what a buffer shuffle does to a sorted file)."""
    rng = np.random.default_rng(0)
    counts = np.zeros((10, 10), dtype=np.int64)
    for _ in range(1500):
        order = np.r_[rng.permutation(8), 8 + rng.permutation(2)]
        counts[order, np.arange(10)] += 1
    assert min(chisquare(counts[line]).pvalue for line in range(10)) < 1e-6


@pytest.mark.timeout(120)
def test_exact_is_a_uniform_permutation_default_is_not() -> None:
    # 4 lines in chunks of 2 + 2 under a 200 B budget: 24 orders
    lines = [b"%d\n" % i for i in range(4)]
    rep = ShuffleReport()
    list(shuffle_lines(lines, memory=200, report=rep))
    assert rep.chunk_lines == [2, 2]
    trials = 1200
    seen = {
        exact: collections.Counter(tuple(shuffle_lines(lines, memory=200, seed=s, exact=exact)) for s in range(trials))
        for exact in (True, False)
    }
    perms = list(itertools.permutations(lines))
    exact_counts = [seen[True][p] for p in perms]
    assert chisquare(exact_counts).pvalue > 1e-3
    # the default emits a round (one line of each chunk) at a time: two lines of one chunk never lead
    first_two_same_chunk = [p for p in perms if {p[0], p[1]} in ({b"0\n", b"1\n"}, {b"2\n", b"3\n"})]
    assert sum(seen[False][p] for p in first_two_same_chunk) == 0
    assert sum(seen[True][p] for p in first_two_same_chunk) > 0.5 * trials * len(first_two_same_chunk) / 24


def test_memory_bound_holds_under_a_tiny_budget(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"".join(b"%08d some text to make the line longer\n" % i for i in range(40_000)))  # 1.8 MB
    budget = 64 * 1024
    shuffle_files([src], tmp_path / "warm.txt", memory=budget)  # imports and caches outside the measurement
    tracemalloc.start()
    try:
        report = shuffle_files([src], tmp_path / "out.txt", memory=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.chunks > 20
    assert report.max_lines_held * 45 <= budget  # lines held at once: bounded by the budget, not the file
    # lines and blocks within ~2x the budget, plus ~12 KiB per open chunk file in the merge (CPython's
    # file object and its read buffer): a fixed cost per chunk, independent of the file's size
    assert peak < 2 * budget + report.chunks * 16 * 1024, peak
    assert peak < src.stat().st_size / 2
    assert sorted((tmp_path / "out.txt").read_bytes().splitlines()) == sorted(src.read_bytes().splitlines())


def test_files_gzip_in_and_out_missing_final_newline(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt.gz", tmp_path / "b.txt"
    with gzip.open(a, "wb") as f:
        f.write(b"a1\na2\na3")  # no final newline
    b.write_bytes(b"b1\nb2")
    out = tmp_path / "out.txt.gz"
    report = shuffle_files([a, b], out, memory=4096, seed=1)
    got = gzip.decompress(out.read_bytes())
    assert sorted(got.splitlines(keepends=True)) == [b"a1\n", b"a2\n", b"a3\n", b"b1\n", b"b2\n"]
    assert report.newlines_added == 2 and report.lines == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": "lots"}, "memory must be a size"),
        ({"memory": 10}, "memory must be at least"),
        ({"memory": "0"}, "memory must be at least"),
        ({"tmp_dir": "/nonexistent-dir"}, "tmp_dir /nonexistent-dir is not a directory"),
    ],
)
def test_bad_parameters(tmp_path: Path, kwargs: dict, message: str) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"x\n")
    with pytest.raises(SimtoolError, match=message):
        shuffle_files([src], tmp_path / "out.txt", **kwargs)
    assert not (tmp_path / "out.txt").exists()


def test_bad_gzip_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    out = tmp_path / "out.txt"
    with pytest.raises(SimtoolError, match=r"cannot read .*bad.gz"):
        shuffle_files([bad], out, tmp_dir=tmp_path)
    assert not out.exists() and temp_dirs(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["bad.gz"]


def test_empty_input_gives_empty_output(tmp_path: Path) -> None:
    src = tmp_path / "empty.txt"
    src.write_bytes(b"")
    assert shuffle_files([src], tmp_path / "out.txt").lines == 0
    assert (tmp_path / "out.txt").read_bytes() == b""


def test_parse_memory() -> None:
    assert parse_memory("256MiB") == 256 * 2**20
    assert parse_memory("1.5G") == int(1.5 * 2**30)
    assert parse_memory("4096") == 4096


def test_closing_the_generator_early_removes_temp_files(tmp_path: Path) -> None:
    gen = shuffle_lines(LINES * 100, memory=4096, tmp_dir=tmp_path)
    next(gen)
    assert len(temp_dirs(tmp_path)) == 1
    gen.close()
    assert temp_dirs(tmp_path) == []


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    src = tmp_path / "in.txt"
    src.write_bytes(b"".join(LINES))
    code, out, err = run_cli(capsys, "shuffle", str(src), "-o", str(tmp_path / "o.txt"), "--memory", "4KiB", "--json")
    assert code == 0, err
    assert json.loads(out)["lines"] == 10
    code, out, err = run_cli(capsys, "shuffle", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o2.txt"))
    assert code == 2 and err.count("\n") == 1 and "missing.txt" in err


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_removes_temp_files_and_writes_no_output(tmp_path: Path, sig: int) -> None:
    """Ctrl-C (or SIGTERM) in the middle of the merge: no temp dir, no output, no half file."""
    # A shell's background job ignores SIGINT and its children inherit that (CI may run so): give the
    # child Python's own Ctrl-C handler back, as an interactive terminal would.
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from simtool.shuffle import shuffle_lines\n"
        "lines = (b'%d\\n' % i for i in range(200000))\n"
        "for i, _ in enumerate(shuffle_lines(lines, memory=65536, tmp_dir=sys.argv[1])):\n"
        "    if i == 10: print('merging', flush=True)\n"
        "    time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"merging\n"
    assert len(temp_dirs(tmp_path)) == 1
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    deadline = time.monotonic() + 5
    while temp_dirs(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert temp_dirs(tmp_path) == []
    assert math.isfinite(proc.returncode)


def test_keep_header_and_epoch_seeds(tmp_path: Path) -> None:
    from simtool.shuffle import epoch_seed

    src = tmp_path / "pairs.csv"
    src.write_bytes(b"sent0,sent1\n" + b"".join(b"a%d,b%d\n" % (i, i) for i in range(500)))
    out = tmp_path / "out.csv"
    shuffle_files([src], out, memory=4096, seed=epoch_seed(7, 2), keep_header=True)
    got = out.read_bytes().splitlines(keepends=True)
    assert got[0] == b"sent0,sent1\n" and sorted(got[1:]) == sorted(src.read_bytes().splitlines(keepends=True)[1:])
    again = tmp_path / "again.csv"
    shuffle_files([src], again, memory=4096, seed=epoch_seed(7, 2), keep_header=True)  # a resumed run
    assert again.read_bytes() == out.read_bytes()
    assert epoch_seed(7, 2) != epoch_seed(7, 3) and epoch_seed(7, 2) != epoch_seed(8, 2)
    other = tmp_path / "other.csv"
    other.write_bytes(b"x,y\n1,2\n")
    with pytest.raises(SimtoolError, match="header differs"):
        shuffle_files([src, other], tmp_path / "bad.csv", keep_header=True)
    assert not (tmp_path / "bad.csv").exists()
