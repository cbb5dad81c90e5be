"""``simtool index build|add|info``: create, extend and describe an index directory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli.common import (
    BatchSize,
    IdColumn,
    IndexDir,
    Json,
    Model,
    Pooling,
    TextColumn,
    TitleColumn,
    corpus_fields,
    emit,
)

index_app = typer.Typer(help="Build, extend and inspect an index directory.", no_args_is_help=True)


def _print_manifest(info: dict[str, Any]) -> None:
    m = info["model"]
    lines = [
        f"index      {info.get('index_dir', '')}",
        f"documents  {info['count']}",
        f"model      {m['name_or_path']} (fingerprint {m['fingerprint']}, pooling {m['pooling']})",
        f"vectors    dim {info['dim']}, metric {info['metric']}",
        f"faiss      {info['factory']}  {' '.join(f'{k}={v}' for k, v in info['search_params'].items())}".rstrip(),
        f"reducers   {', '.join(r.get('kind', '?') for r in info['reducers']) or 'none'}",
        f"updated    {info['updated_at']}",
    ]
    if "bytes_on_disk" in info:
        lines.append(
            f"size       {info['bytes_on_disk'] / 2**20:.1f} MiB" + ("  (checksums OK)" if info["verified"] else "")
        )
    typer.echo("\n".join(lines))


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Argument(help="Corpus: .txt, .jsonl (BEIR), .csv or .tsv, optionally .gz.")],
    index_dir: IndexDir = None,
    model: Model = None,
    pooling: Pooling = None,
    factory: Annotated[str, typer.Option("--factory", help="'auto' or a FAISS index_factory string.")] = "auto",
    metric: Annotated[
        str, typer.Option("--metric", help="ip (inner product; cosine for normalised models) or l2.")
    ] = "ip",
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu", help="Build on GPU when faiss sees one.")] = True,
    batch_size: BatchSize = 64,
    max_seq_length: Annotated[int | None, typer.Option("--max-seq-length")] = None,
    memory_budget_gb: Annotated[
        float | None, typer.Option("--memory-budget", help="GiB the index may use (auto factory) \\[default: RAM/2].")
    ] = None,
    text_column: TextColumn = None,
    id_column: IdColumn = None,
    title_column: TitleColumn = None,
    json_out: Json = False,
) -> None:
    """Encode a corpus and build a new index directory (replaces an existing one atomically)."""
    from simtool.index import build_index, index_info

    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    started = time.perf_counter()
    build_index(
        corpus,
        index_dir,
        model=model,
        pooling=pooling,
        max_seq_length=max_seq_length,
        factory=factory,
        metric=metric,
        gpu=gpu,
        batch_size=batch_size,
        memory_budget=budget,
        fields=corpus_fields(text_column, id_column, title_column),
        progress=not json_out,
    )
    info = index_info(index_dir, verify=False)
    info["seconds"] = round(time.perf_counter() - started, 3)
    if json_out:
        emit(info)
    else:
        _print_manifest(info)
        typer.echo(f"built in {info['seconds']:.1f}s")


@index_app.command("add")
def index_add(
    corpus: Annotated[Path, typer.Argument(help="Corpus with new documents, same formats as build.")],
    index_dir: IndexDir = None,
    model: Annotated[str | None, typer.Option("--model", help="Must be the index's model (checked).")] = None,
    on_duplicate: Annotated[
        str, typer.Option("--on-duplicate", help="An id already indexed: 'error' (nothing written) or 'skip'.")
    ] = "error",
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu")] = True,
    batch_size: BatchSize = 64,
    text_column: TextColumn = None,
    id_column: IdColumn = None,
    title_column: TitleColumn = None,
    json_out: Json = False,
) -> None:
    """Add documents to an existing index, encoded with the index's own model."""
    from simtool.index import add_to_index

    manifest, added, skipped = add_to_index(
        corpus,
        index_dir,
        model=model,
        on_duplicate=on_duplicate,
        gpu=gpu,
        batch_size=batch_size,  # type: ignore[arg-type]
        fields=corpus_fields(text_column, id_column, title_column),
        progress=not json_out,
    )
    if json_out:
        emit({"added": added, "skipped": skipped, "count": manifest.count})
    else:
        typer.echo(f"added {added} documents, skipped {skipped} already indexed; the index holds {manifest.count}")


@index_app.command("info")
def index_info_cmd(
    index_dir: IndexDir = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file's sha256.")] = True,
    json_out: Json = False,
) -> None:
    """Describe an index: model, factory, counts, files."""
    from simtool.index import index_info

    info = index_info(index_dir, verify=verify)
    if json_out:
        emit(info)
    else:
        _print_manifest(info)
