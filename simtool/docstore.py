"""SQLite document store: one row per indexed vector.

``row`` is the vector's position in the FAISS index (0-based, insertion order), so a
search hit maps to its document with one primary-key lookup.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simtool.corpus import Document
from simtool.filters import SqlFilter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL
)
"""


class DocStore:
    """Documents by row; open read-only for search, read-write inside a staging directory."""

    def __init__(self, path: str | Path, *, readonly: bool = True, shared: bool = False) -> None:
        """``shared``: the connection may be used from several threads (the caller serialises calls)."""
        self.path = Path(path)
        if readonly:
            # immutable=1: a segment's file never changes once written, so SQLite may skip locking.
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=not shared)
            # Open the file now: a writer may unlink it later, and the open descriptor keeps it readable.
            self._db.execute("SELECT 1 FROM docs LIMIT 1").fetchall()
        else:
            self._db = sqlite3.connect(self.path)
            # DELETE journal: the committed file is self-contained (no -wal beside it to checksum).
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def add(self, docs: Iterable[Document], start_row: int) -> None:
        """Insert documents at rows ``start_row, start_row + 1, ...``.

        A duplicate id raises ``sqlite3.IntegrityError``.
        """
        self._db.executemany(
            "INSERT INTO docs (row, id, title, text, metadata) VALUES (?, ?, ?, ?, ?)",
            (
                (start_row + i, d.id, d.title, d.text, json.dumps(d.metadata, ensure_ascii=False))
                for i, d in enumerate(docs)
            ),
        )

    def rows_of(self, ids: Sequence[str]) -> dict[str, int]:
        """``{id: row}`` for the given ids that are stored here."""
        found: dict[str, int] = {}
        for i in range(0, len(ids), 900):  # SQLite's default bound-parameter limit is 999
            chunk = ids[i : i + 900]
            q = f"SELECT id, row FROM docs WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(self._db.execute(q, chunk).fetchall())
        return found

    def filter_rows(self, filter: SqlFilter) -> np.ndarray:
        """Rows whose metadata match a compiled filter, ``(m,) int64``."""
        cur = self._db.execute(f"SELECT row FROM docs WHERE {filter.where}", filter.params)
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def iter_rows(self, start: int, stop: int) -> list[Document]:
        """Documents of rows ``start..stop-1`` in row order."""
        q = "SELECT id, title, text, metadata FROM docs WHERE row >= ? AND row < ? ORDER BY row"
        return [
            Document(id=i, text=t, title=ti, metadata=json.loads(m))
            for i, ti, t, m in self._db.execute(q, (start, stop))
        ]

    def get_rows(self, rows: Sequence[int]) -> dict[int, Document]:
        """Documents for the given rows (missing rows are absent from the result)."""
        out: dict[int, Document] = {}
        unique = sorted({int(r) for r in rows if r >= 0})
        for i in range(0, len(unique), 900):
            chunk = unique[i : i + 900]
            q = f"SELECT row, id, title, text, metadata FROM docs WHERE row IN ({','.join('?' * len(chunk))})"
            for row, doc_id, title, text, meta in self._db.execute(q, chunk):
                out[row] = Document(id=doc_id, text=text, title=title, metadata=json.loads(meta))
        return out

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
