"""Data tools: ``simtool shuffle``, ``simtool drift``, ``simtool split``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli.common import BatchSize, Json, Model, emit


def shuffle(
    inputs: Annotated[list[Path], typer.Argument(help="Line files (plain or .gz), shuffled together.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file; gzip when it ends in .gz.")],
    memory: Annotated[str, typer.Option("--memory", help="Memory for lines, e.g. 256MiB, 1GiB.")] = "1GiB",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    tmp_dir: Annotated[
        Path | None, typer.Option("--tmp-dir", help="Where the chunk files go (needs the input's size).")
    ] = None,
    exact: Annotated[
        bool, typer.Option("--exact", help="Uniform permutation (draw chunks by remaining lines).")
    ] = False,
    json_out: Json = False,
) -> None:
    """Globally shuffle the lines of huge files in bounded memory (two passes over disk)."""
    from simtool.shuffle import shuffle_files

    report = shuffle_files(
        inputs, output, memory=memory, seed=seed, exact=exact, tmp_dir=tmp_dir, progress=not json_out
    )
    if json_out:
        emit(report.to_json())
    else:
        typer.echo(
            f"shuffled {report.lines} lines ({report.bytes / 2**20:.1f} MiB) in {report.chunks} chunks into {output} "
            f"in {report.split_seconds + report.merge_seconds:.1f}s"
            + (f"; added a final newline to {report.newlines_added} file(s)" if report.newlines_added else "")
        )


def _fmt(value: float | None, reason: str | None) -> str:
    return f"{value:.4f}" if value is not None else f"undefined: {reason}"


def drift(
    a: Annotated[str, typer.Argument(help="Corpus file, .npy (n, d) matrix, or index directory.")],
    b: Annotated[str, typer.Argument(help="Same kinds as A.")],
    model: Model = None,
    vectors: Annotated[bool, typer.Option("--vectors", help="A and B are .npy matrices or index directories.")] = False,
    sample: Annotated[int, typer.Option("--sample", help="Rows kept per side for the random-pair cosine.")] = 2000,
    batch_size: BatchSize = 64,
    json_out: Json = False,
) -> None:
    """Distance between the embedding distributions of A and B (Gaussian KL, Bhattacharyya, W2, isotropy)."""
    from simtool.drift import GaussianStats, drift_report, load_vectors
    from simtool.errors import SimtoolError

    def needs_model(p: str) -> bool:
        return not (Path(p).is_dir() or p.endswith(".npy"))

    encoder: Any = None
    if vectors and (needs_model(a) or needs_model(b)):
        raise SimtoolError("--vectors takes .npy files or index directories only")
    if not vectors and (needs_model(a) or needs_model(b)):
        from simtool.encoder import load_encoder

        encoder = load_encoder(model)
    started = time.perf_counter()
    sa = GaussianStats.fit(load_vectors(a, model=encoder, batch_size=batch_size), sample_rows=sample)
    sb = GaussianStats.fit(load_vectors(b, model=encoder, batch_size=batch_size), sample_rows=sample)
    report = drift_report(sa, sb)
    report["seconds"] = round(time.perf_counter() - started, 3)
    if json_out:
        emit(report)
        return
    w = report["whitened_on_a"]
    lines = [
        f"A {a}: {report['n_a']} vectors;  B {b}: {report['n_b']} vectors;  dim {report['dim']}",
        f"KL(A||B)        {_fmt(report['kl_a_b'], report.get('kl_a_b_undefined'))}",
        f"KL(B||A)        {_fmt(report['kl_b_a'], report.get('kl_b_a_undefined'))}",
        f"Bhattacharyya   {_fmt(report['bhattacharyya'], report.get('bhattacharyya_undefined'))}",
        f"W2 (Frechet)    {report['w2']:.4f}",
        f"W2 to N(0,I)    A {report['w2_a_to_standard']:.4f}   B {report['w2_b_to_standard']:.4f}",
        f"anisotropy      A {report['anisotropy_a']:.4f}   B {report['anisotropy_b']:.4f}   (0 = isotropic)",
        f"mean cosine     A {report['mean_cosine_a']:.4f}   B {report['mean_cosine_b']:.4f}   (random pairs)",
        f"whitened on A   W2 {w['w2']:.4f}; W2 to N(0,I) A {w['w2_a_to_standard']:.4f} B {w['w2_b_to_standard']:.4f}; "
        f"anisotropy A {w['anisotropy_a']:.4f} B {w['anisotropy_b']:.4f}; "
        f"mean cosine A {w['mean_cosine_a']:.4f} B {w['mean_cosine_b']:.4f}",
        report["recommendation"],
    ]
    typer.echo("\n".join(lines))


def split(
    train: Annotated[Path, typer.Argument(help="Training rows: .txt, .jsonl, .csv/.tsv (STS pairs, training pairs).")],
    like: Annotated[Path, typer.Option("--like", help="The test set the dev split should resemble.")],
    dev_size: Annotated[int, typer.Option("--dev-size", help="Rows moved from TRAIN to dev.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for dev.* and train.*.")],
    model: Model = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-validation folds for scoring rows.")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: BatchSize = 64,
    json_out: Json = False,
) -> None:
    """Move the TRAIN rows that a classifier finds most like TEST into a dev file."""
    from simtool.devsplit import like_split, read_rows, row_embeddings, write_split
    from simtool.encoder import encode_texts, load_encoder

    train_rows, test_rows = read_rows(train), read_rows(like)
    if dev_size <= 0 or dev_size >= len(train_rows):
        from simtool.errors import SimtoolError

        raise SimtoolError(f"--dev-size must be between 1 and {len(train_rows) - 1}, got {dev_size}")
    encoder = load_encoder(model)

    def embed(texts: list[str]) -> Any:
        return encode_texts(encoder, texts, batch_size=batch_size)

    result = like_split(
        row_embeddings(train_rows, embed), row_embeddings(test_rows, embed), dev_size, folds=folds, seed=seed
    )
    dev_path, train_path = write_split(train_rows, result, output)
    info = {**result.to_json(), "dev": str(dev_path), "train": str(train_path), "layout": train_rows.layout}
    if json_out:
        emit(info)
    else:
        typer.echo(
            f"AUC {result.auc:.3f} ({info['auc_kind']}; 0.5 = indistinguishable); "
            f"wrote {len(result.dev)} dev rows to {dev_path} and {len(result.train)} train rows to {train_path}"
        )


def register(app: typer.Typer) -> None:
    for command in (shuffle, drift, split):
        app.command()(command)
