"""Long texts: ``simtool extend-positions`` and the ``--long-text`` options other commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import Json, Model, emit

# Shared by `encode` and `index build` (and, as the index's own, `index add`); the values mirror
# simtool.chunking.LONG_TEXT_MODES, which the library checks, so this module imports nothing heavy.
_LONG_TEXT_HELP = (
    "Texts past the model's limit: truncate, chunk-mean (mean of token windows) or chunk-max (one vector per "
    "window; `encode` repeats ids per window, an index scores each document by its best window)."
)
LongText = Annotated[str, typer.Option("--long-text", help=_LONG_TEXT_HELP)]
ChunkTokens = Annotated[
    int | None,
    typer.Option("--chunk-tokens", help="Window size in word pieces \\[default: max-seq-length - 2]."),
]
ChunkOverlap = Annotated[int, typer.Option("--chunk-overlap", help="Word pieces shared by neighbouring windows.")]
# `index add`: the index's manifest decides; a value given must match it
IndexLongText = Annotated[
    str | None,
    typer.Option("--long-text", help="Must match the index's (checked) \\[default: the index's]. " + _LONG_TEXT_HELP),
]
IndexChunkTokens = Annotated[
    int | None, typer.Option("--chunk-tokens", help="Must match the index's (checked) \\[default: the index's].")
]
IndexChunkOverlap = Annotated[
    int | None, typer.Option("--chunk-overlap", help="Must match the index's (checked) \\[default: the index's].")
]
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


def eval_long(
    bench: Annotated[str, typer.Argument(help="pydoc (Python's reference topics) or scifact (needs --data).")],
    data: Annotated[Path | None, typer.Option("--data", help="BEIR SciFact directory (for scifact).")] = None,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated: truncate-256,truncate-512,chunk-mean,chunk-max,hier-N.")
    ] = "truncate-256,truncate-512,chunk-mean,chunk-max,hier-1024,hier-2048,hier-4096",
    model: Model = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    queries: Annotated[int, typer.Option("--queries", help="Queries to sample.")] = 300,
    abstracts: Annotated[int, typer.Option("--abstracts", help="scifact: abstracts per long document.")] = 10,
    output: Annotated[Path | None, typer.Option("--output", help="Write long_<bench>.json and .md here.")] = None,
    json_out: Json = False,
) -> None:
    """Long-document retrieval: nDCG@10 by where the relevant passage starts, per long-text method."""
    from simtool.errors import SimtoolError
    from simtool.evals.long import build_pydoc, build_scifact, evaluate_long, markdown_table, write_results

    if bench == "pydoc":
        b = build_pydoc(seed=seed, max_queries=queries)
    elif bench == "scifact":  # two data sets, each a builder with its own inputs
        if data is None:
            raise SimtoolError("scifact needs --data DIR (a BEIR SciFact directory)")
        b = build_scifact(data, seed=seed, n_queries=queries, abstracts_per_doc=abstracts)
    else:
        raise SimtoolError(f"bench must be pydoc or scifact, got {bench!r}")

    def progress(name: str, row: dict[str, object]) -> None:
        if not json_out:
            typer.echo(f"{name}: nDCG@10 {row['ndcg_at_10']:.2f} ({row['encode_seconds']}s)", err=True)

    result = evaluate_long(b, model, [m.strip() for m in methods.split(",") if m.strip()], on_method=progress)
    if output is not None:
        result["written"] = str(write_results(result, output))
    if json_out:
        emit(result)
    else:
        typer.echo(markdown_table(result))


def register(app: typer.Typer) -> None:
    from simtool.cli.eval_cmd import eval_app

    app.command("extend-positions")(extend_positions)
    eval_app.command("long")(eval_long)
