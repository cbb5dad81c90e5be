"""``simtool demo``: index the bundled sample corpus with the default model and search it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import Json, emit, print_hits


def demo(
    query: Annotated[str, typer.Option("--query", help="The sample query.")] = "how do I handle an exception",
    index_dir: Annotated[Path | None, typer.Option("--index-dir", help="\\[default: $SIMTOOL_HOME/demo-index]")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k")] = 5,
    json_out: Json = False,
) -> None:
    """Index the bundled sample corpus (Python's reference topics) with the default model and search it."""
    from simtool.config import SAMPLE_CORPUS as corpus
    from simtool.config import simtool_home
    from simtool.index import build_index
    from simtool.retriever import Retriever

    target = index_dir or simtool_home() / "demo-index"
    manifest = build_index(corpus, target, progress=not json_out)
    if not json_out:
        typer.echo(f"indexed {manifest.count} documents from {corpus.name} into {target} ({manifest.factory})")
    with Retriever.load(target) as retriever:
        hits = retriever.search(query, k)
    if json_out:
        emit({"query": query, "results": [h.to_json() for h in hits]})
    else:
        print_hits(query, hits)
