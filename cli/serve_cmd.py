"""``simtool serve``: the OpenAI-compatible embedding service (FastAPI + uvicorn, extra ``simtool[serve]``)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from simtool.cli.common import EncodeBackend, IndexDir, Model


def serve(
    index_dir: IndexDir = None,
    model: Model = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; non-loopback needs an API key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="Bearer key for every route but /health \\[default: $SIMTOOL_API_KEY]."),
    ] = None,
    max_batch_tokens: Annotated[int, typer.Option("--max-batch-tokens", help="Token budget of one encode.")] = 16_384,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", help="How long a batch waits for more requests.")
    ] = 2.0,
    workers: Annotated[int, typer.Option("--workers", help="Processes, each with its own model.")] = 1,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="Pack concurrent requests.")] = True,
    backend: EncodeBackend = "auto",
) -> None:
    """Serve /v1/embeddings (OpenAI-compatible), /v1/models, /health, /metrics and, with --index-dir,
    /v1/search and /v1/documents, until SIGTERM."""
    from simtool.serve import ServeConfig
    from simtool.serve import serve as run

    config = ServeConfig(
        index_dir=None if index_dir is None else str(index_dir),
        model=model,
        host=host,
        port=port,
        api_key=api_key or os.environ.get("SIMTOOL_API_KEY") or None,
        max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms,
        workers=workers,
        batching=batching,
        backend=backend,
    )
    config.check()
    typer.echo(
        f"simtool serve: http://{host}:{port}/v1 (auth {'on' if config.api_key else 'off'}, --backend {backend})",
        err=True,
    )
    run(config)
