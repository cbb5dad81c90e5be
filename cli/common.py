"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

IndexDir = Annotated[
    Path | None,
    typer.Option("--index-dir", help="Index directory \\[default: $SIMTOOL_HOME/index, SIMTOOL_HOME=~/.simtool]."),
]
Model = Annotated[
    str | None,
    typer.Option("--model", help="Model: local directory or cached hub name \\[default: all-MiniLM-L6-v2]."),
]
Pooling = Annotated[
    str | None,
    typer.Option("--pooling", help="cls, mean, max, last-avg or first-last-avg \\[default: the model's]."),
]
EncodeBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Encode backend: auto, torch, torch-bf16, openvino, openvino-bf16 or openvino-int8 (see README).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object (quiet, for scripts).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Texts per encoder forward pass.")]
TextColumn = Annotated[str | None, typer.Option("--text-column", help="Field holding the text \\[default: text].")]
IdColumn = Annotated[str | None, typer.Option("--id-column", help="Field holding the id \\[default: _id or id].")]
TitleColumn = Annotated[str | None, typer.Option("--title-column", help="Field holding the title \\[default: title].")]


def emit(obj: Any) -> None:
    """One JSON object on one line of stdout."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def corpus_fields(text: str | None, id_: str | None, title: str | None) -> Any:
    from simtool.index import CorpusFields

    return CorpusFields(text=text, id=id_, title=title)


def print_hits(query: str, hits: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"query: {query}"), title_justify="left", show_lines=False, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("title / text", ratio=1)
    for h in hits:
        snippet = h.text if len(h.text) <= 160 else h.text[:157] + "..."
        cell = Text.assemble((h.title, "bold"), "\n", snippet) if h.title else Text(snippet)
        table.add_row(str(h.rank), f"{h.score:.4f}", Text(h.id), cell)
    Console().print(table)
