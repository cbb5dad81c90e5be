"""Corpus readers: every format, gz, BOM, and every bad input naming file and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from simtool.corpus import read_documents, scan_corpus
from simtool.errors import CorpusError


def test_txt_ids_are_line_numbers_and_blank_lines_skipped(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("first\n\nthird line\n", encoding="utf-8")
    docs = list(read_documents(p))
    assert [(d.id, d.text) for d in docs] == [("1", "first"), ("3", "third line")]


def test_jsonl_beir_layout_with_metadata(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(
        '{"_id": "a", "title": "T", "text": "body", "metadata": {"year": 2020}}\n{"id": 7, "text": "x", "lang": "en"}\n'
    )
    a, b = read_documents(p)
    assert (a.id, a.title, a.text, a.metadata) == ("a", "T", "body", {"year": 2020})
    assert a.encoded_text == "T body"
    assert (b.id, b.title, b.metadata) == ("7", None, {"lang": "en"})
    assert b.encoded_text == "x"


def test_gz_and_bom(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wb") as f:
        f.write('\ufeff{"_id": "a", "text": "héllo"}\n'.encode())
    (doc,) = read_documents(p)
    assert (doc.id, doc.text) == ("a", "héllo")


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t"), (".tsv.gz", "\t")])
def test_tables_with_text_column(tmp_path: Path, suffix: str, sep: str) -> None:
    p = tmp_path / f"c{suffix}"
    content = sep.join(["id", "body", "tag"]) + "\n" + sep.join(["x1", "some text", "t"]) + "\n"
    if suffix.endswith(".gz"):
        p.write_bytes(gzip.compress(content.encode()))
    else:
        p.write_text(content)
    (doc,) = read_documents(p, text_field="body")
    assert (doc.id, doc.text, doc.metadata) == ("x1", "some text", {"tag": "t"})
    with pytest.raises(CorpusError, match=r"c\.(csv|tsv(\.gz)?):1: no column 'text'.*--text-column"):
        list(read_documents(p))


def test_csv_quoted_fields_keep_commas_and_newlines(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text('id,text\n1,"a, b"\n2,"multi\nline"\n')
    docs = list(read_documents(p))
    assert [d.text for d in docs] == ["a, b", "multi\nline"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.jsonl", '{"_id": "a", "text": "ok"}\n{"_id": "b", "text": \n', r"c\.jsonl:2: malformed JSON"),
        ("c.jsonl", '{"_id": "a", "title": "no text"}\n', r"c\.jsonl:1: missing 'text' field"),
        ("c.jsonl", '{"_id": "a", "text": 3}\n', r"c\.jsonl:1: field 'text' must be a string"),
        ("c.jsonl", '["not", "an", "object"]\n', r"c\.jsonl:1: expected a JSON object"),
        ("c.jsonl", '{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', r"c\.jsonl:2: duplicate id 'a'"),
        ("c.csv", "id,text\n1,a,extra\n", r"c\.csv:2: expected 2 fields, got 3"),
        ("c.parquet", "x", r"unknown corpus format 'parquet'"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(CorpusError, match=message):
        scan_corpus(p)


def test_non_utf8_names_line(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"c\.txt:2: not valid UTF-8"):
        scan_corpus(p)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        scan_corpus(tmp_path / "absent.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="corpus is empty"):
        scan_corpus(tmp_path / "empty.txt")
    with pytest.raises(CorpusError, match="is a directory"):
        scan_corpus(tmp_path)


def test_tsv_quotes_are_plain_text(tmp_path: Path) -> None:
    p = tmp_path / "c.tsv"
    p.write_text('id\ttext\n1\t"Hello," she said\n2\tplain\n')
    docs = list(read_documents(p))
    assert [d.text for d in docs] == ['"Hello," she said', "plain"]
