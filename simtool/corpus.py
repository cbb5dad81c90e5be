"""Corpus readers: ``.txt``, ``.jsonl`` (BEIR layout), ``.csv`` and ``.tsv``, each optionally ``.gz``.

Every error names the file and, where there is one, the 1-based line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simtool.errors import CorpusError

FORMATS = ("txt", "jsonl", "csv", "tsv")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def encoded_text(self) -> str:
        """What the encoder sees: ``title + " " + text``, stripped, as BEIR and MTEB encode documents."""
        return f"{self.title} {self.text}".strip() if self.title else self.text.strip()


def detect_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = suffixes[-1].lstrip(".") if suffixes else ""
    if fmt == "json":
        fmt = "jsonl"
    if fmt not in FORMATS:
        raise CorpusError(
            f"{path}: unknown corpus format {fmt or '(no suffix)'!r}; expected one of "
            ".txt, .jsonl, .csv, .tsv (optionally .gz)"
        )
    return fmt


def find_data_file(directory: Path, name: str) -> Path | None:
    """``directory / name``, else ``directory / (name + ".gz")``: the first that is a file, or None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _open_binary(path: Path) -> io.BufferedIOBase:
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller through the wrapper
    return gzip.GzipFile(fileobj=raw) if path.suffix.lower() == ".gz" else raw


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` decoded as strict UTF-8 (a leading BOM is dropped)."""
    with _open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
                if lineno == 1 and line.startswith("\ufeff"):
                    line = line[1:]
                yield lineno, line.rstrip("\r\n")
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise CorpusError(f"{path}: cannot read: {e}") from None


def read_documents(
    path: str | Path,
    *,
    text_field: str | None = None,
    id_field: str | None = None,
    title_field: str | None = None,
) -> Iterator[Document]:
    """Stream the documents of a corpus file.

    ``txt``: one text per line, id = line number, blank lines skipped.
    ``jsonl``: ``text``, optional ``title``, id from ``_id`` or ``id`` (else the line number);
    other keys go to ``metadata``. ``csv``/``tsv``: a header row; the text column is
    ``text_field`` (default ``text``). Duplicate ids are an error.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory, expected a corpus file")
    fmt = detect_format(path)
    reader = {"txt": _read_txt, "jsonl": _read_jsonl, "csv": _read_table, "tsv": _read_table}[fmt]
    seen: set[str] = set()
    for lineno, doc in reader(path, fmt=fmt, text_field=text_field, id_field=id_field, title_field=title_field):
        if doc.id in seen:
            raise CorpusError(f"{path}:{lineno}: duplicate id {doc.id!r}")
        seen.add(doc.id)
        yield doc


def scan_corpus(path: str | Path, **fields: str | None) -> int:
    """Validate the whole file before any work is done; return the document count (> 0)."""
    n = sum(1 for _ in read_documents(path, **fields))
    if n == 0:
        raise CorpusError(f"{path}: corpus is empty")
    return n


def _read_txt(path: Path, **_: Any) -> Iterator[tuple[int, Document]]:
    for lineno, line in iter_lines(path):
        if line.strip():
            yield lineno, Document(id=str(lineno), text=line)


def iter_json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each non-blank line of a JSONL file; anything but a JSON object is an error."""
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def iter_table_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` for each row of a CSV (``","``) or TSV (``"\t"``) file, the header included.

    CSV follows standard quoting, strictly, so a quoted field may span lines (its last line is reported).
    TSV is read without quoting, as TSV data is written: quote characters are plain text.
    """
    current = 0

    def physical_lines() -> Iterator[str]:
        nonlocal current
        for current, line in iter_lines(path):  # noqa: B007 - the loop variable is the reported line
            yield line + "\n"  # keeps newlines inside quoted CSV fields

    if delimiter == "\t":
        reader = csv.reader(physical_lines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:  # strict: a stray quote is an error, not a silently merged field
        reader = csv.reader(physical_lines(), delimiter=delimiter, strict=True)
    try:
        for row in reader:
            yield current, row
    except csv.Error as e:
        raise CorpusError(f"{path}:{current}: malformed row ({e})") from None


def _read_jsonl(
    path: Path, *, text_field: str | None, id_field: str | None, title_field: str | None, **_: Any
) -> Iterator[tuple[int, Document]]:
    text_key, title_key = text_field or "text", title_field or "title"
    for lineno, obj in iter_json_objects(path):
        yield lineno, _document(path, lineno, obj, text_key, id_field, title_key)


def _read_table(
    path: Path, *, fmt: str, text_field: str | None, id_field: str | None, title_field: str | None
) -> Iterator[tuple[int, Document]]:
    rows = iter_table_rows(path, "\t" if fmt == "tsv" else ",")
    header = next(rows, (1, None))[1]
    if header is None:
        return
    text_key = text_field or "text"
    if text_key not in header:
        hint = "" if text_field else "; pass --text-column"
        raise CorpusError(f"{path}:1: no column {text_key!r} in header {header}{hint}")
    for lineno, row in rows:
        if not row:
            continue
        if len(row) != len(header):
            raise CorpusError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
        yield (
            lineno,
            _document(path, lineno, dict(zip(header, row, strict=True)), text_key, id_field, title_field or "title"),
        )


def _document(
    path: Path, lineno: int, obj: dict[str, Any], text_key: str, id_field: str | None, title_key: str
) -> Document:
    if text_key not in obj:
        raise CorpusError(f"{path}:{lineno}: missing {text_key!r} field")
    text = obj[text_key]
    if not isinstance(text, str):
        raise CorpusError(f"{path}:{lineno}: field {text_key!r} must be a string, got {type(text).__name__}")
    id_keys = (id_field,) if id_field else ("_id", "id")
    doc_id: Any = next((obj[k] for k in id_keys if k in obj), None)
    if doc_id is None:
        if id_field:
            raise CorpusError(f"{path}:{lineno}: missing {id_field!r} field")
        doc_id = lineno
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise CorpusError(f"{path}:{lineno}: id must be a string or an integer, got {type(doc_id).__name__}")
    title = obj.get(title_key)
    if title is not None and not isinstance(title, str):
        raise CorpusError(f"{path}:{lineno}: field {title_key!r} must be a string")
    used = {text_key, title_key, *id_keys}
    metadata = {k: v for k, v in obj.items() if k not in used}
    # BEIR nests extra fields under "metadata"; flatten one level so they are not double-wrapped.
    nested = metadata.pop("metadata", None)
    if isinstance(nested, dict):
        metadata = {**nested, **metadata}
    elif nested is not None:
        metadata["metadata"] = nested
    return Document(id=str(doc_id), text=text, title=title or None, metadata=metadata)


def read_queries(path: str | Path) -> list[tuple[str, str]]:
    """``(id, text)`` pairs from a query file in any corpus format (BEIR ``queries.jsonl`` included)."""
    docs = list(read_documents(path))
    if not docs:
        raise CorpusError(f"{path}: no queries")
    return [(d.id, d.text) for d in docs]
