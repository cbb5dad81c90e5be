"""A child process for the crash and concurrency tests: replays a seeded script of index writes.

``python -m tests.live_writer INDEX_DIR SEED FIRST_OP N_OPS`` applies ops ``FIRST_OP..``
of the script and prints ``ack <op> <generation>`` after each write returns. It writes
precomputed vectors through :meth:`Index.append`, so it never loads torch or a model and starts
in well under a second.
"""

from __future__ import annotations

import random
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

DIM = 32


def vector(doc_id: str, version: int) -> np.ndarray:
    """The fixed unit vector of one version of one document."""
    v = np.random.default_rng(zlib.crc32(f"{doc_id}/{version}".encode())).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def script(seed: int, n_ops: int) -> list[tuple[str, list[str], int]]:
    """``(kind, ids, version)`` per op; every op changes the index, so op i publishes one generation.

    The index starts with one document, ``init``, which the script never touches.
    """
    rng = random.Random(seed)
    live: set[str] = set()
    next_id = 0
    ops: list[tuple[str, list[str], int]] = []
    for i in range(n_ops):
        kind = rng.choice(["add", "add", "delete", "upsert", "compact"] if live else ["add"])
        if kind == "add":
            ids = [f"d{next_id + j}" for j in range(rng.randint(1, 40))]
            next_id += len(ids)
            live |= set(ids)
        elif kind == "delete":
            ids = rng.sample(sorted(live), min(len(live), rng.randint(1, 15)))
            live -= set(ids)
        elif kind == "upsert":
            ids = [*rng.sample(sorted(live), min(len(live), rng.randint(1, 10))), f"d{next_id}"]
            next_id += 1
            live |= set(ids)
        else:
            ids = []
        ops.append((kind, ids, i + 1))
    return ops


def expected_states(seed: int, n_ops: int) -> list[dict[str, int]]:
    """``states[i]``: ``{id: version}`` after the first ``i`` ops."""
    state = {"init": 0}
    states = [dict(state)]
    for kind, ids, version in script(seed, n_ops):
        if kind in ("add", "upsert"):
            state.update((i, version) for i in ids)
        elif kind == "delete":
            for i in ids:
                state.pop(i)
        states.append(dict(state))
    return states


def docs_and_vectors(ids: list[str], version: int) -> tuple[list[Any], np.ndarray]:
    from simtool.corpus import Document

    docs = [Document(id=i, text=f"{i} version {version}", metadata={"version": version}) for i in ids]
    vectors = np.stack([vector(i, version) for i in ids]) if ids else np.zeros((0, DIM), np.float32)
    return docs, vectors


def main() -> None:
    from simtool.index import EncodedPart, Index

    directory = Path(sys.argv[1])
    seed, first, n_ops = map(int, sys.argv[2:5])
    index = Index(directory, auto_merge=False, gpu=False)
    for op, (kind, ids, version) in enumerate(script(seed, n_ops)):
        if op < first:
            continue
        if kind in ("add", "upsert"):
            part = EncodedPart(*docs_and_vectors(ids, version))
            generation = index.append([part], on_duplicate="replace" if kind == "upsert" else "error")
        elif kind == "delete":
            generation = index.delete(ids)
        else:
            generation = index.compact()
        print(f"ack {op} {generation}", flush=True)


if __name__ == "__main__":
    main()
