"""kill -9 during a build or an add: the previous index stays intact and searchable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simtool.index import add_to_index, build_index, index_info
from simtool.retriever import Retriever
from tests.conftest import WORDS, write_jsonl

pytestmark = pytest.mark.slow


def _big_corpus(path: Path, n: int) -> Path:
    rng = random.Random(1)
    return write_jsonl(path, [{"_id": f"b{i}", "text": " ".join(rng.choices(WORDS, k=24))} for i in range(n)])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "simtool", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _kill_when(proc: subprocess.Popen[bytes], ready: callable, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the build never reached the phase to interrupt")


def _staging(parent: Path, name: str) -> list[Path]:
    return list(parent.glob(f".{name}.staging-*"))


@pytest.mark.parametrize("phase", ["encoding", "writing-index"])
def test_kill_9_during_build_keeps_previous_index(
    tmp_path: Path, small_corpus: Path, tiny_st: Path, phase: str
) -> None:
    target = tmp_path / "idx"
    build_index(small_corpus, target, model=str(tiny_st), progress=False)
    before = _snapshot(target)
    big = _big_corpus(tmp_path / "big.jsonl", 6_000)
    proc = _start(["index", "build", str(big), "--index-dir", str(target), "--model", str(tiny_st), "--json"])

    def ready() -> bool:
        stages = _staging(tmp_path, "idx")
        if phase == "encoding":
            return any((s / "docs.sqlite").exists() for s in stages)
        return any((s / "index.faiss").exists() for s in stages)

    killed = _kill_when(proc, ready)
    assert killed, "the build finished before it could be interrupted"
    assert _snapshot(target) == before  # not one byte changed
    with Retriever.load(target) as r:
        assert r.search("anything at all", k=5)[0].id.startswith("d")
    assert index_info(target)["count"] == 40
    # the next build clears the dead process's staging directory and succeeds
    build_index(small_corpus, target, model=str(tiny_st), progress=False)
    assert _staging(tmp_path, "idx") == []


def test_kill_9_during_add_keeps_previous_index(tmp_path: Path, small_corpus: Path, tiny_st: Path) -> None:
    target = tmp_path / "idx"
    build_index(small_corpus, target, model=str(tiny_st), progress=False)
    before = _snapshot(target)
    big = _big_corpus(tmp_path / "big.jsonl", 6_000)
    proc = _start(["index", "add", str(big), "--index-dir", str(target), "--json"])
    assert _kill_when(proc, lambda: any((s / "vectors.npy").exists() for s in _staging(tmp_path, "idx")))
    assert _snapshot(target) == before
    with Retriever.load(target) as r:
        assert len(r.search("cat", k=100)) == 40
    # and a completed add afterwards is consistent
    add_to_index(write_jsonl(tmp_path / "one.jsonl", [{"_id": "x", "text": "one more"}]), target, progress=False)
    assert index_info(target)["count"] == 41
