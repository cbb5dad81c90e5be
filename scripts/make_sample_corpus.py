"""Regenerate simtool/data/python_reference.jsonl: prose paragraphs of Python's own help topics.

The text ships with CPython (``pydoc_data.topics``, PSF licence). The file is committed so the
sample corpus is the same on every Python version; rerun this only to refresh it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from pydoc_data.topics import topics

OUT = Path(__file__).resolve().parents[1] / "simtool" / "data" / "python_reference.jsonl"


def paragraphs(body: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", body):
        if block.startswith((" ", "\t")) or re.fullmatch(r"[^\n]*\n[*=\-^~]+", block.strip()):
            continue  # code, grammar and headings
        text = " ".join(block.split())
        if 120 <= len(text) <= 1200 and not text.startswith(("*", "Changed in", "New in", "Added in")):
            out.append(text)
    return out


def main() -> None:
    rows = []
    for key in sorted(topics):
        title = topics[key].strip().splitlines()[0].strip()
        for i, para in enumerate(paragraphs(topics[key])):
            rows.append({"_id": f"{key}-{i}", "title": title, "text": para})
    with open(OUT, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} documents -> {OUT}")


if __name__ == "__main__":
    main()
