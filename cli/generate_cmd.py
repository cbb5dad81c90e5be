"""``simtool generate``: similar sentences from a RoFormer-Sim model (sample, dedupe, rerank by its own cosine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simtool.cli.common import Json, emit
from simtool.errors import SimtoolError


def generate(
    sentence: Annotated[str | None, typer.Argument(help="Sentence to paraphrase.")] = None,
    model: Annotated[str, typer.Option("--model", help="A model trained with --recipe roformer-sim.")] = "",
    input_file: Annotated[Path | None, typer.Option("--input", help="File with one sentence per line.")] = None,
    n: Annotated[int, typer.Option("-n", help="Results per sentence.")] = 5,
    candidates: Annotated[int, typer.Option("--candidates", help="Samples drawn per sentence.")] = 100,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 0.95,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Sample among the K likeliest tokens.")] = None,
    temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens of source + generated sentence.")] = 64,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed: the same seed gives the same output.")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    json_out: Json = False,
) -> None:
    """Generate sentences similar to SENTENCE (or each line of --input), ranked by the model's cosine."""
    if not model:
        raise SimtoolError("--model is required (a directory trained with --recipe roformer-sim)")
    if (sentence is None) == (input_file is None):
        raise SimtoolError("give either a SENTENCE or --input FILE")
    if input_file is not None:
        if not input_file.is_file():
            raise SimtoolError(f"--input {input_file}: no such file")
        texts = [line.strip() for line in input_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise SimtoolError(f"--input {input_file}: no sentences")
    else:
        texts = [str(sentence)]
    from simtool.roformer_sim import generate_similar, load_roformer_sim

    sim = load_roformer_sim(model, device=device)
    results = generate_similar(
        sim,
        texts,
        n=n,
        candidates=candidates,
        top_p=top_p,
        top_k=top_k,
        temperature=temperature,
        max_length=max_length,
        seed=seed,
    )
    for text, found in zip(texts, results, strict=True):
        rows = [{"rank": i + 1, "text": t, "score": round(s, 6)} for i, (t, s) in enumerate(found)]
        if json_out:
            emit({"input": text, "results": rows})
        else:
            typer.echo(f"input: {text}")
            for r in rows:
                typer.echo(f"{r['rank']:>3}  {r['score']:.4f}  {r['text']}")
