"""``simtool encode``: a corpus file to a float32 .npy matrix plus its ids."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import (
    BatchSize,
    EncodeBackend,
    IdColumn,
    Json,
    Model,
    Pooling,
    TextColumn,
    TitleColumn,
    corpus_fields,
    emit,
)
from simtool.cli.distributed_cmd import GpusPerWorker, RayAddress, Workers, check_ray_flags, encode_on_ray
from simtool.cli.long_cmd import DEFAULT_CHUNK_OVERLAP, ChunkOverlap, ChunkTokens, LongText


def encode(
    input: Annotated[Path, typer.Argument(help="Corpus: .txt, .jsonl, .csv or .tsv, optionally .gz.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output .npy, (n, d) float32; ids go to OUT.ids.json.")
    ],
    model: Model = None,
    pooling: Pooling = None,
    batch_size: BatchSize = 64,
    max_seq_length: Annotated[int | None, typer.Option("--max-seq-length")] = None,
    text_column: TextColumn = None,
    id_column: IdColumn = None,
    title_column: TitleColumn = None,
    backend: EncodeBackend = "auto",
    long_text: LongText = "truncate",
    chunk_tokens: ChunkTokens = None,
    chunk_overlap: ChunkOverlap = DEFAULT_CHUNK_OVERLAP,
    json_out: Json = False,
    ray: RayAddress = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = 0.0,
) -> None:
    """Encode a corpus file into a float32 .npy matrix plus its ids."""
    check_ray_flags(ray, workers, gpus_per_worker)
    if ray is not None:
        columns = {"text": text_column, "id": id_column, "title": title_column}
        encode_on_ray(
            [input],
            output,
            address=ray,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            model=model,
            pooling=pooling,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            fields=columns,
            json_out=json_out,
            backend=backend,
            long_text=long_text,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
        )
        return
    from simtool.backends import backend_info
    from simtool.chunking import encode_long_file
    from simtool.encoder import embedding_dim, load_encoder
    from simtool.protocols import encoder_info

    fields = corpus_fields(text_column, id_column, title_column)
    n = fields.count(input)
    encoder = load_encoder(model, pooling, None, max_seq_length, backend=backend)
    started = time.perf_counter()
    ids_path, rows = encode_long_file(
        lambda: fields.read(input),
        n,
        output,
        encoder,
        mode=long_text,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        batch_size=batch_size,
        progress=not json_out,
    )
    seconds = time.perf_counter() - started
    info = encoder_info(encoder)
    result = {
        "output": str(output),
        "ids": str(ids_path),
        "n": n,
        "rows": rows,
        "long_text": long_text,
        "dim": embedding_dim(encoder),
        "model": info.source,
        "pooling": info.pooling,
        "backend": backend_info(encoder),
        "seconds": round(seconds, 3),
        "texts_per_second": round(n / seconds, 1),
    }
    if json_out:
        emit(result)
    else:
        typer.echo(
            f"wrote {rows} x {result['dim']} float32 ({n} texts, {long_text}) to {output} (ids: {ids_path}) "
            f"in {seconds:.1f}s, {result['texts_per_second']:.0f} texts/s ({result['backend']['name']} backend)"
        )
