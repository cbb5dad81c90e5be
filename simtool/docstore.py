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

from simtool.corpus import Document

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

    def __init__(self, path: str | Path, *, readonly: bool = True) -> None:
        self.path = Path(path)
        if readonly:
            # immutable=1: the file never changes under us (writers build a new directory).
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
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

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 900):  # SQLite's default bound-parameter limit is 999
            chunk = ids[i : i + 900]
            q = f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self._db.execute(q, chunk))
        return found

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
