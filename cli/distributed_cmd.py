"""``--ray`` for the commands that encode: the shared options and the Ray path of ``simtool encode``.

Ray (extra ``simtool[ray]``) is imported only when ``--ray`` is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli.common import emit, report_stream, reserve_stdout

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="local|auto|ADDRESS",
        help="Run on Ray: `local` starts a cluster here, `auto` joins a running one, or a cluster address.",
    ),
]
Workers = Annotated[int | None, typer.Option("--workers", help="Ray encoder actors \\[default: one per CPU or GPU].")]
GpusPerWorker = Annotated[float, typer.Option("--gpus-per-worker", help="GPUs per Ray encoder actor (0: CPU).")]


def check_ray_flags(address: str | None, workers: int | None, gpus_per_worker: float) -> None:
    """``--workers``/``--gpus-per-worker`` only mean something with ``--ray``; never ignore them silently."""
    from simtool.errors import SimtoolError

    if address is None and (workers is not None or gpus_per_worker):
        raise SimtoolError("--workers and --gpus-per-worker need --ray local|auto|ADDRESS")


def ray_options(address: str, workers: int | None, gpus_per_worker: float) -> Any:
    from simtool.distributed import RayOptions

    reserve_stdout()  # before Ray starts: its driver prints notices to stdout
    return RayOptions(address=None if address == "local" else address, workers=workers, gpus_per_worker=gpus_per_worker)


def encode_on_ray(
    inputs: list[Path],
    output: Path,
    *,
    address: str,
    workers: int | None,
    gpus_per_worker: float,
    model: str | None,
    pooling: str | None,
    batch_size: int,
    max_seq_length: int | None,
    fields: dict[str, str | None],
    json_out: bool,
    backend: str,
    long_text: str,
    chunk_tokens: int | None,
    chunk_overlap: int,
) -> None:
    """``simtool encode --ray``: the same .npy and ids file as the in-process path, encoded by Ray actors."""
    from simtool.distributed import encode_file_ray

    options = ray_options(address, workers, gpus_per_worker)
    started = time.perf_counter()
    done = encode_file_ray(
        inputs,
        output,
        model=model,
        pooling=pooling,
        max_seq_length=max_seq_length,
        batch_size=batch_size,
        options=options,
        fields=fields,
        progress=not json_out,
        backend=backend,
        long_text=long_text,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
    )
    seconds = time.perf_counter() - started
    result = {
        "output": str(output),
        "ids": done["ids"],
        "n": done["n"],
        "dim": done["dim"],
        "long_text": long_text,
        "model": model or "all-MiniLM-L6-v2",
        "ray": address,
        "workers": done["workers"],
        "backend": done["backend"],
        "seconds": round(seconds, 3),
        "texts_per_second": round(done["n"] / seconds, 1),
    }
    if json_out:
        emit(result)
    else:
        typer.echo(
            f"wrote {done['n']} x {done['dim']} float32 to {output} (ids: {done['ids']}) on Ray "
            f"({done['workers']} workers, {done['backend']} backend) in {seconds:.1f}s, "
            f"{result['texts_per_second']:.0f} texts/s",
            file=report_stream(),
        )
