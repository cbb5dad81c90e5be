"""``simtool index build|add|delete|compact|verify|upgrade|info``: write and inspect an index directory."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli.common import (
    BatchSize,
    EncodeBackend,
    IdColumn,
    IndexDir,
    Json,
    Model,
    Pooling,
    TextColumn,
    TitleColumn,
    corpus_fields,
    emit,
    report_stream,
)
from simtool.cli.distributed_cmd import GpusPerWorker, RayAddress, Workers, check_ray_flags, ray_options
from simtool.cli.long_cmd import (
    DEFAULT_CHUNK_OVERLAP,
    ChunkOverlap,
    ChunkTokens,
    IndexChunkOverlap,
    IndexChunkTokens,
    IndexLongText,
    LongText,
)
from simtool.errors import SimtoolError

index_app = typer.Typer(help="Build, change and inspect an index directory.", no_args_is_help=True)

LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for another writer before giving up.")
]
SegmentRows = Annotated[
    int | None,
    typer.Option(
        "--segment-rows",
        min=1,
        help="Rows per new segment (each segment's FAISS index is built on its own, bounding memory) "
        "\\[default: one segment; 1,000,000 with --ray].",
    ),
]


def _read_all(fields: Any, paths: list[Path]) -> Iterator[Any]:
    """Every file's documents in order; each file is validated in full before any is read."""
    for path in paths:
        fields.count(path)
    for path in paths:
        yield from fields.read(path)


def _print_manifest(info: dict[str, Any]) -> None:
    m = info["model"]
    lines = [
        f"index      {info.get('index_dir', '')}",
        f"documents  {info['count']}",
        f"model      {m['name_or_path']} (fingerprint {m['fingerprint']}, pooling {m['pooling']})",
        f"vectors    dim {info['dim']}, metric {info['metric']}",
        f"faiss      {info['factory']}  {' '.join(f'{k}={v}' for k, v in info['search_params'].items())}".rstrip(),
        f"segments   {len(info['segments'])} ({info['deleted']} deleted rows), generation {info['generation']}",
        f"reducers   {', '.join(r.get('kind', '?') for r in info['reducers']) or 'none'}",
        f"long text  {_long_text_line(info.get('long_text') or {})}",
        f"backend    {_backend_line(info['backend'], info['backend_check'])}",
        f"updated    {info['updated_at']}",
    ]
    if "bytes_on_disk" in info:
        lines.append(
            f"size       {info['bytes_on_disk'] / 2**20:.1f} MiB" + ("  (checksums OK)" if info["verified"] else "")
        )
    typer.echo("\n".join(lines), file=report_stream())


def _backend_line(built: dict[str, Any], check: dict[str, Any]) -> str:
    line = f"{built['name']} ({built['precision']}, fingerprint {built['fingerprint'] or '-'}"
    line += f", max 1 - cos {built['tolerance']:.0e})" if built.get("tolerance") is not None else ")"
    if built.get("assumed"):
        line += " [assumed: manifest predates backends]"
    if check["requested"] is not None:
        verdict = "within tolerance" if check["within_tolerance"] else "PAST tolerance, refused"
        line += f"; --backend {check['requested']} -> {check['resolved'] or '-'}: {verdict} ({check['note']})"
    return line


def _long_text_line(spec: dict[str, Any]) -> str:
    if not spec:
        return "truncate"
    return f"{spec['mode']} ({spec['chunk_tokens']}-token windows, overlap {spec['chunk_overlap']})"


@index_app.command("build")
def index_build(
    corpus: Annotated[
        list[Path], typer.Argument(help="Corpus file(s): .txt, .jsonl (BEIR), .csv or .tsv, optionally .gz.")
    ],
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
    long_text: LongText = "truncate",
    chunk_tokens: ChunkTokens = None,
    chunk_overlap: ChunkOverlap = DEFAULT_CHUNK_OVERLAP,
    backend: EncodeBackend = "auto",
    segment_rows: SegmentRows = None,
    ray: RayAddress = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    json_out: Json = False,
) -> None:
    """Encode a corpus and build a new index directory (replaces an existing one atomically)."""
    from simtool.index import build_index, index_info

    if metric not in ("ip", "l2"):
        raise SimtoolError(f"--metric must be one of ip, l2, got {metric!r}")
    check_ray_flags(ray, workers, gpus_per_worker)
    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    fields = corpus_fields(text_column, id_column, title_column)
    started = time.perf_counter()
    if ray is not None:
        from simtool.distributed.ray_index import build_index_ray

        done = build_index_ray(
            corpus,
            index_dir,
            model=model,
            pooling=pooling,
            max_seq_length=max_seq_length,
            factory=factory,
            metric=metric,
            gpu=gpu,
            memory_budget=budget,
            options=ray_options(ray, workers, gpus_per_worker),
            batch_size=batch_size,
            fields=dataclasses.asdict(fields),
            backend=backend,
            long_text=long_text,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            **({} if segment_rows is None else {"segment_rows": segment_rows}),
        )
    else:
        build_index(
            corpus[0] if len(corpus) == 1 else _read_all(fields, corpus),
            index_dir,
            model=model,
            pooling=pooling,
            max_seq_length=max_seq_length,
            factory=factory,
            metric=metric,
            gpu=gpu,
            batch_size=batch_size,
            memory_budget=budget,
            fields=fields,
            progress=not json_out,
            long_text=long_text,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            backend=backend,
            segment_rows=segment_rows,
        )
    info = index_info(index_dir, verify=False)
    if ray is not None:
        info["ray"] = {"address": ray, "workers": done["workers"], "parts": done["parts"], "backend": done["backend"]}
    info["seconds"] = round(time.perf_counter() - started, 3)
    if json_out:
        emit(info)
    else:
        _print_manifest(info)
        typer.echo(f"built in {info['seconds']:.1f}s", file=report_stream())


@index_app.command("add")
def index_add(
    corpus: Annotated[list[Path], typer.Argument(help="Corpus file(s) with new documents, same formats as build.")],
    index_dir: IndexDir = None,
    model: Annotated[str | None, typer.Option("--model", help="Must be the index's model (checked).")] = None,
    on_duplicate: Annotated[
        str,
        typer.Option(
            "--on-duplicate",
            help="An id already indexed: 'error' (nothing written), 'skip', or 'replace' (upsert).",
        ),
    ] = "error",
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu")] = True,
    batch_size: BatchSize = 64,
    text_column: TextColumn = None,
    id_column: IdColumn = None,
    title_column: TitleColumn = None,
    lock_timeout: LockTimeout = 30.0,
    backend: EncodeBackend = "auto",
    segment_rows: SegmentRows = None,
    long_text: IndexLongText = None,
    chunk_tokens: IndexChunkTokens = None,
    chunk_overlap: IndexChunkOverlap = None,
    ray: RayAddress = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    json_out: Json = False,
) -> None:
    """Add documents to an existing index in one commit, encoded with the index's own model (and a backend
    within the index's tolerance) and its long-text method (the manifest's; `index info` shows it)."""
    from simtool.chunking import check_index_long_text
    from simtool.index import Index

    if on_duplicate not in ("error", "skip", "replace"):
        raise SimtoolError(f"--on-duplicate must be error, skip or replace, got {on_duplicate!r}")
    check_ray_flags(ray, workers, gpus_per_worker)
    fields = corpus_fields(text_column, id_column, title_column)
    index = Index(index_dir, gpu=gpu, lock_timeout=lock_timeout, backend=backend)
    check_index_long_text(index.manifest.long_text, long_text, chunk_tokens, chunk_overlap)
    if model is not None:
        from simtool.encoder import load_encoder
        from simtool.index import check_same_model

        check_same_model(index.manifest, load_encoder(model, None, None, index.manifest.model.max_seq_length))
    if ray is not None:
        from simtool.distributed.ray_index import add_to_index_ray

        done = add_to_index_ray(
            corpus,
            index.directory,
            options=ray_options(ray, workers, gpus_per_worker),
            batch_size=batch_size,
            fields=dataclasses.asdict(fields),
            on_duplicate=on_duplicate,  # type: ignore[arg-type]  # checked against the literals above
            lock_timeout=lock_timeout,
            backend=backend,
            **({} if segment_rows is None else {"segment_rows": segment_rows}),
        )
        count = index.manifest.count
        if json_out:
            emit({**done, "count": count, "ray": ray})
        else:
            typer.echo(
                f"added {done['added']} documents on Ray ({done['workers']} workers, {done['parts']} parts); "
                f"the index holds {count} at generation {done['generation']}",
                file=report_stream(),
            )
        return
    from simtool.backends import backend_info

    docs = _read_all(fields, corpus)
    result = index.write(
        docs,
        on_duplicate=on_duplicate,  # type: ignore[arg-type]  # checked against the literals above
        batch_size=batch_size,
        progress=not json_out,
        source=", ".join(map(str, corpus)),
        segment_rows=segment_rows,
    )
    count = index.manifest.count
    report = {
        "added": result.added,
        "replaced": result.deleted,
        "skipped": result.skipped,
        "count": count,
        "generation": result.generation,
        "merged_segments": result.merged,
        "backend": backend_info(index.encoder()),
    }
    if json_out:
        emit(report)
    else:
        typer.echo(
            f"added {result.added} documents ({result.deleted} replaced), skipped {result.skipped} already indexed; "
            f"the index holds {count} at generation {result.generation}"
        )


def _read_ids(values: list[str], ids_file: Path | None) -> list[str]:
    ids = list(values)
    if ids_file is not None:
        from simtool.corpus import iter_lines

        ids.extend(line.strip() for _, line in iter_lines(ids_file) if line.strip())
    if not ids:
        raise SimtoolError("give ids to delete as arguments or with --ids FILE (one per line)")
    return ids


@index_app.command("delete")
def index_delete(
    ids: Annotated[list[str] | None, typer.Argument(help="Document ids to delete.")] = None,
    ids_file: Annotated[Path | None, typer.Option("--ids", help="A file of ids to delete, one per line.")] = None,
    index_dir: IndexDir = None,
    lock_timeout: LockTimeout = 30.0,
    json_out: Json = False,
) -> None:
    """Delete documents by id: tombstones in one new generation; search never returns them again."""
    from simtool.index import Index

    wanted = _read_ids(ids or [], ids_file)
    index = Index(index_dir, lock_timeout=lock_timeout)
    result = index.write((), delete=wanted)
    report = {
        "deleted": result.deleted,
        "not_found": len(result.missing),
        "count": index.manifest.count,
        "generation": result.generation,
    }
    if json_out:
        emit(report)
    else:
        typer.echo(
            f"deleted {result.deleted} documents ({len(result.missing)} ids not found); "
            f"the index holds {report['count']} at generation {result.generation}"
        )


@index_app.command("compact")
def index_compact(
    index_dir: IndexDir = None,
    factory: Annotated[
        str | None, typer.Option("--factory", help="Re-index with this factory \\[default: the index's].")
    ] = None,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Retrain the quantizer (IVF) instead of merging its inverted lists.")
    ] = False,
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu")] = True,
    lock_timeout: LockTimeout = 30.0,
    json_out: Json = False,
) -> None:
    """Merge all segments into one, dropping deleted rows.

    An IVF index merges its segments' inverted lists on disk with its trained quantizer; other
    indexes (and --retrain, --factory) re-index the raw vectors."""
    from simtool.index import Index, index_info

    started = time.perf_counter()
    index = Index(index_dir, gpu=gpu, lock_timeout=lock_timeout)
    before = len(index.manifest.segments)
    generation = index.compact(factory=factory, retrain=retrain, progress=not json_out)
    info = index_info(index_dir)
    merged = any(seg["ondisk"] for seg in info["segments"])
    report = {
        "segments_before": before,
        "segments": len(info["segments"]),
        "count": info["count"],
        "generation": generation,
        "method": "merged inverted lists" if merged else "re-indexed",
        "seconds": round(time.perf_counter() - started, 3),
    }
    if json_out:
        emit(report)
    else:
        typer.echo(
            f"compacted {before} segments into {report['segments']} ({report['method']}); {info['count']} documents "
            f"at generation {generation} in {report['seconds']:.1f}s"
        )


@index_app.command("verify")
def index_verify(index_dir: IndexDir = None, json_out: Json = False) -> None:
    """Check the size and sha256 of every file of the newest generation; names the first bad file."""
    from simtool.index import verify_index

    report = verify_index(index_dir)
    if json_out:
        emit(report)
    else:
        typer.echo(f"{report['index_dir']}: generation {report['generation']}, {report['files']} files OK")


@index_app.command("upgrade")
def index_upgrade(index_dir: Annotated[Path, typer.Argument(help="A format-1 index directory.")]) -> None:
    """Convert a format-1 index directory in place (atomically) to the segmented format."""
    from simtool.index import upgrade_index

    manifest = upgrade_index(index_dir)
    typer.echo(f"{index_dir}: format 2, generation {manifest.generation}, {manifest.count} documents")


@index_app.command("info")
def index_info_cmd(
    index_dir: IndexDir = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file's sha256.")] = False,
    backend: EncodeBackend = "auto",
    json_out: Json = False,
) -> None:
    """Describe an index: model, factory, counts, files, the build backend and whether --backend is within its
    tolerance here."""
    from simtool.index import index_info

    info = index_info(index_dir, verify=verify, backend=backend)
    if json_out:
        emit(info)
    else:
        _print_manifest(info)
