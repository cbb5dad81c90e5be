"""``simtool export``: a model converted for an OpenVINO backend, gated by the accuracy guard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import Json, Pooling, emit


def export(
    model: Annotated[str, typer.Argument(help="Model: local directory, cached hub name or all-MiniLM-L6-v2.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write (a sentence-transformers dir).")],
    backend: Annotated[str, typer.Option("--backend", help="openvino (fp32, exact) or openvino-int8.")] = "openvino",
    calibration: Annotated[
        Path | None,
        typer.Option("--calibration", help="Corpus file for int8 calibration \\[default: a built-in sample]."),
    ] = None,
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="Largest allowed STS-sample Spearman drop (x100) vs fp32.")
    ] = 0.1,
    pooling: Pooling = None,
    json_out: Json = False,
) -> None:
    """Export MODEL for an OpenVINO backend; refuses (writes nothing) past --max-drop."""
    from simtool.backends.export import export_model
    from simtool.encoder import load_encoder

    encoder = load_encoder(model, pooling, "cpu", backend="torch")
    record = export_model(encoder, backend, output, calibration=calibration, max_drop=max_drop, source=model)
    result = {"output": str(output), **record}
    if json_out:
        emit(result)
    else:
        g = record["guard"]
        typer.echo(
            f"wrote {backend} export to {output}: STS-sample Spearman {g['spearman']:.2f} "
            f"(fp32 {g['spearman_fp32']:.2f}, drop {g['drop']:.3f}), max 1-cos {g['max_one_minus_cos']:.2e}"
        )
