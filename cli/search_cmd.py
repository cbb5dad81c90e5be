"""``simtool search``: query an index from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import BatchSize, EncodeBackend, IndexDir, Json, emit, print_hits
from simtool.errors import SimtoolError


def search(
    query: Annotated[str | None, typer.Argument(help="The query text.")] = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help="A file of queries (.txt one per line, or .jsonl with text).")
    ] = None,
    index_dir: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.")] = 10,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF lists to visit \\[default: manifest's].")] = None,
    ef_search: Annotated[int | None, typer.Option("--ef-search", help="HNSW efSearch \\[default: manifest's].")] = None,
    backend: EncodeBackend = "auto",
    search_backend: Annotated[
        str, typer.Option("--search-backend", help="Search engine: auto, faiss or torch (exact).")
    ] = "auto",
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter",
            help='Metadata filter as JSON, e.g. \'{"source": "docs", "year": {"$in": [2020, 2021]}}\'.',
        ),
    ] = None,
    batch_size: BatchSize = 64,
    json_out: Json = False,
) -> None:
    """Search an index; with --json one object per query, one per line."""
    from simtool.corpus import read_queries
    from simtool.protocols import encoder_info
    from simtool.retriever import Retriever, search_json

    if (query is None) == (queries is None):
        raise SimtoolError("give either a QUERY argument or --queries FILE")
    if k <= 0:
        raise SimtoolError(f"-k must be positive, got {k}")
    if search_backend not in ("auto", "faiss", "torch"):
        raise SimtoolError(f"--search-backend must be auto, faiss or torch, got {search_backend!r}")
    for name, value in (("--nprobe", nprobe), ("--ef-search", ef_search)):
        if value is not None and value <= 0:
            raise SimtoolError(f"{name} must be positive, got {value}")
    if filter_ is not None:
        from simtool.filters import parse_filter

        try:
            parse_filter(filter_)
        except SimtoolError as e:
            raise SimtoolError(f"--filter: {e}") from None
    batch = [(None, query)] if query is not None else read_queries(queries)  # type: ignore[arg-type]  # one of the two is set (checked above)
    params = {k_: v for k_, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    with Retriever.load(
        index_dir,
        backend=search_backend,  # type: ignore[arg-type]  # one of the literals, checked above
        search_params=params,
        encode_backend=backend,
    ) as retriever:
        results = []
        for start in range(0, len(batch), 1024):
            chunk = batch[start : start + 1024]
            results.extend(retriever.search([text for _, text in chunk], k, filter=filter_))
        info = encoder_info(retriever.encoder)
    # Which backend encoded the queries: `auto` resolves per machine, and a user comparing runs needs to know.
    used = {"name": info.backend, "precision": info.precision}
    for (qid, text), hits in zip(batch, results, strict=True):
        if json_out:
            emit(search_json(text, hits, qid, backend=used))
        else:
            print_hits(text, hits)
