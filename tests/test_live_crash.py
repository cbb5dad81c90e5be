"""kill -9 in the middle of add / delete / upsert / compact, and readers racing a writer, in real processes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simtool.corpus import Document
from simtool.index import EncodedPart, Index, build_index, live_vectors, verify_index
from simtool.manifest import Manifest
from simtool.retriever import Retriever
from tests.live_writer import docs_and_vectors, expected_states, script, vector

REPO = Path(__file__).resolve().parent.parent


def _start_index(path: Path, encoder: Any) -> Path:
    build_index(
        [Document(id="init", text="the first document", metadata={"version": 0})], path, model=encoder, progress=False
    )
    return path


def _state(path: Path) -> dict[str, int]:
    with Retriever.load(path, load_model=False) as r:
        _, ids = r.live_vectors()
        docs = r.get(ids)
    assert len(ids) == len(set(ids)) == len(docs)
    return {i: docs[i].metadata["version"] for i in ids}


def _check_search(path: Path, state: dict[str, int], init_vector: np.ndarray) -> None:
    """Each live document's own vector finds it first: FAISS rows and document rows agree."""
    ids = sorted(state)
    q = np.stack([init_vector if i == "init" else vector(i, state[i]) for i in ids])
    with Retriever.load(path, load_model=False) as r:
        hits = r.hits_for(*r.search_vectors(q, 1))
    assert [h[0].id for h in hits] == ids


def _writer(path: Path, seed: int, first: int, n_ops: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.live_writer", str(path), str(seed), str(first), str(n_ops)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def crash_trials(tmp_path: Path, encoder: Any, trials: int, seed: int) -> int:
    """Kill a writer at random moments, ``trials`` times; after each kill the index must hold exactly the
    state of the generation it names, which is never older than the last acknowledged write."""
    path = _start_index(tmp_path / "idx", encoder)
    init_vector = np.asarray(live_vectors(path))[0]
    base = Manifest.load(path).generation
    n_ops = trials * 3
    states = expected_states(seed, n_ops)
    rng = random.Random(seed)
    done = 0
    kills = 0
    for _ in range(trials):
        if done >= n_ops:
            break
        proc = _writer(path, seed, done, n_ops)
        time.sleep(rng.uniform(0.4, 1.6))  # start-up is ~0.6 s: some kills land before, most inside writes
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        kills += proc.returncode == -signal.SIGKILL
        acked = [int(line.split()[1]) for line in out.splitlines() if line.startswith("ack ")]
        generation = Manifest.load(path).generation
        applied = generation - base
        if acked:
            assert applied >= acked[-1] + 1, "an acknowledged write was lost"
        assert applied <= (acked[-1] + 2 if acked else done + 1)
        state = _state(path)
        assert state == states[applied]
        _check_search(path, state, init_vector)
        done = applied
    # the next writer clears what the killed ones left, checks every file, and the index verifies
    Index(path, auto_merge=False).append([EncodedPart(*docs_and_vectors(["last"], 99))])
    assert verify_index(path)["ok"]
    m = Manifest.load(path)
    on_disk = {p.relative_to(path).as_posix() for p in (path / "segments").rglob("*") if p.is_file()}
    assert on_disk == set(m.files) - {f for f in m.files if f.startswith(("reducers/", "trained/"))}
    return kills


@pytest.mark.timeout(120)
def test_kill_9_during_writes_few_trials(tmp_path: Path, encoder: Any) -> None:
    assert crash_trials(tmp_path, encoder, trials=4, seed=1) >= 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_during_writes_50_trials(tmp_path: Path, encoder: Any) -> None:
    assert crash_trials(tmp_path, encoder, trials=50, seed=2) >= 25


def _wait_for_readers(path: Path, generation: int, timeout: float = 10.0) -> None:
    """Until every reader's lease names ``generation`` or later (a reader refreshes, then searches it)."""
    from simtool.locks import held_generations

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leases = held_generations(path)
        if not leases.pending and leases.generations and min(leases.generations) >= generation:
            return
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readers_in_three_processes_see_only_whole_generations(tmp_path: Path, encoder: Any) -> None:
    path = _start_index(tmp_path / "idx", encoder)
    init_vector = np.asarray(live_vectors(path))[0]
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    stop = tmp_path / "stop"
    # Each reader writes to a file: through a pipe nobody drains during the writes, a reader would block on
    # a full pipe buffer and stop refreshing.
    logs = [tmp_path / f"reader-{i}.jsonl" for i in range(3)]
    readers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.live_reader", str(path), str(tmp_path / "q.npy"), str(stop)],
            cwd=REPO,
            stdout=log.open("w"),
        )
        for log in logs
    ]
    deadline = time.monotonic() + 120
    while not all(log.exists() and log.stat().st_size for log in logs) and time.monotonic() < deadline:
        time.sleep(0.05)  # until all three are searching
    index = Index(path, auto_merge=True, merge_factor=4)
    states = {index.generation: {"init": 0}}
    n_ops = 50
    state = {"init": 0}
    for kind, ids, version in script(7, n_ops):
        if kind in ("add", "upsert"):
            g = index.append([EncodedPart(*docs_and_vectors(ids, version))], on_duplicate="replace")
            state.update((i, version) for i in ids)
        elif kind == "delete":
            g = index.delete(ids)
            for i in ids:
                state.pop(i)
        else:
            g = index.compact()
        # merges publish generations of their own, each with the same documents
        for gen in range(max(states) + 1, index.generation + 1):
            states[gen] = dict(state)
        assert g in states
        _wait_for_readers(path, index.generation)  # every reader moves to each generation, however loaded the machine
    time.sleep(0.5)
    stop.touch()
    assert all(p.wait(timeout=60) == 0 for p in readers)
    outputs = [log.read_text() for log in logs]
    for out in outputs:
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]  # skip library chatter
        gens = [line["generation"] for line in lines]
        assert len(lines) > 10 and gens == sorted(gens) and len(set(gens)) > 3
        for line in lines[:: max(1, len(lines) // 40)]:
            snap = states[line["generation"]]
            ids = sorted(snap)
            x = np.stack([init_vector if i == "init" else vector(i, snap[i]) for i in ids]).astype(np.float64)
            exact = queries.astype(np.float64) @ x.T
            for qi, hits in enumerate(line["hits"]):
                order = np.argsort(-exact[qi], kind="stable")[: len(hits)]
                assert [h[0] for h in hits] == [ids[j] for j in order]
                assert [h[1] for h in hits] == [snap[ids[j]] for j in order]
                np.testing.assert_allclose([h[2] for h in hits], exact[qi][order], atol=1e-5)
