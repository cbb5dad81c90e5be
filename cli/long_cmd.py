"""Long texts: ``simtool extend-positions`` and the ``--long-text`` options other commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import Json, Model, emit

# Shared by `encode` (and, once wired, `index build` / `eval retrieval`); the values mirror
# simtool.chunking.LONG_TEXT_MODES, which the library checks, so this module imports nothing heavy.
LongText = Annotated[
    str,
    typer.Option(
        "--long-text",
        help="Texts past the model's limit: truncate, chunk-mean (mean of token windows) or chunk-max "
        "(one vector per window; ids repeat per window).",
    ),
]
ChunkTokens = Annotated[
    int | None,
    typer.Option("--chunk-tokens", help="Window size in word pieces \\[default: max-seq-length - 2]."),
]
ChunkOverlap = Annotated[int, typer.Option("--chunk-overlap", help="Word pieces shared by neighbouring windows.")]
DEFAULT_CHUNK_OVERLAP = 32  # = simtool.chunking.DEFAULT_CHUNK_OVERLAP (checked by a test)


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
