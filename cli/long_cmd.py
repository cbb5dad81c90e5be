"""Long texts: ``simtool extend-positions``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import Json, Model, emit


def extend_positions(
    output: Annotated[Path, typer.Option("--output", "-o", help="New model directory to write.")],
    max_length: Annotated[int, typer.Option("--max-length", help="Positions of the new model, e.g. 2048.")],
    model: Model = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Hierarchical decomposition weight (§7.1).")] = 0.4,
    json_out: Json = False,
) -> None:
    """Write a copy of MODEL whose absolute position table reaches --max-length (no training)."""
    from simtool.positions import extend_positions as extend

    out = extend(model, max_length, output, alpha=alpha)
    if json_out:
        emit({"output": str(out), "max_length": max_length, "alpha": alpha})
    else:
        typer.echo(f"wrote {out}: {max_length} positions (alpha {alpha:g})")


def register(app: typer.Typer) -> None:
    app.command("extend-positions")(extend_positions)
