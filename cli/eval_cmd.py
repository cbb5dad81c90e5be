"""``simtool eval``: STS, retrieval and named suites, scored as MTEB scores them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli.common import BatchSize, EncodeBackend, Json, Model, Pooling, emit

eval_app = typer.Typer(
    help="Score an encoder on STS and retrieval datasets, exactly as MTEB scores them.", no_args_is_help=True
)

_METRIC_LABELS = {"cosine": "cosine", "euclidean": "euclidean", "manhattan": "manhattan", "dot": "dot"}


def _warn(message: str) -> None:
    print(f"simtool: warning: {message}", file=sys.stderr)


def _fmt(x: Any) -> str:
    return "  nan" if x is None or x != x else f"{x:6.2f}"


def _print_sts(result: Any) -> None:
    s = result.scores
    backend = result.info.get("encode_backend", {}).get("name", "?")
    typer.echo(
        f"{result.task}  split {result.split}  {result.n} pairs  ({result.info.get('path', '')}, {backend} backend)"
    )
    typer.echo(f"{'similarity':<12}{'Spearman':>10}{'Pearson':>10}")
    for name in _METRIC_LABELS:
        typer.echo(f"{name:<12}{_fmt(s[f'{name}_spearman']):>10}{_fmt(s[f'{name}_pearson']):>10}")
    if "subsets" in s:
        typer.echo("")
        typer.echo(f"{'subset':<24}{'n':>7}{'Spearman':>10}{'Pearson':>10}   (cosine)")
        for name, sub in s["subsets"].items():
            typer.echo(f"{name:<24}{sub['n']:>7}{_fmt(sub['cosine_spearman']):>10}{_fmt(sub['cosine_pearson']):>10}")
        typer.echo(
            f"{'all (concatenated)':<24}{result.n:>7}{_fmt(s['all']['cosine_spearman']):>10}"
            f"{_fmt(s['all']['cosine_pearson']):>10}"
        )
        typer.echo(
            f"{'wmean (by subset size)':<24}{result.n:>7}{_fmt(s['wmean']['cosine_spearman']):>10}"
            f"{_fmt(s['wmean']['cosine_pearson']):>10}"
        )
    typer.echo(f"main score (cosine Spearman x100): {result.main_score:.2f}")


@eval_app.command("sts")
def eval_sts(
    path: Annotated[Path, typer.Argument(help="An STS file or directory.")],
    format: Annotated[
        str, typer.Option("--format", help="auto, stsb, senteval, sick, cn or pairs (see `simtool.evals.readers`).")
    ] = "auto",
    split: Annotated[
        str | None, typer.Option("--split", help="Split to score \\[default: test; SICK: all; from the file name].")
    ] = None,
    model: Model = None,
    pooling: Pooling = None,
    batch_size: BatchSize = 64,
    sentence1_column: Annotated[str, typer.Option("--sentence1-column", help="pairs: first sentence.")] = "sentence1",
    sentence2_column: Annotated[str, typer.Option("--sentence2-column", help="pairs: second sentence.")] = "sentence2",
    score_column: Annotated[str, typer.Option("--score-column", help="pairs: gold score.")] = "score",
    backend: EncodeBackend = "auto",
    json_out: Json = False,
) -> None:
    """Score sentence-pair similarity: Spearman and Pearson of cosine (main), Euclidean, Manhattan, dot, x100."""
    from simtool.encoder import load_encoder
    from simtool.evals.readers import PairColumns, load_sts
    from simtool.evals.sts import evaluate_sts_data

    if batch_size <= 0:
        raise typer.BadParameter(f"must be positive, got {batch_size}", param_hint="--batch-size")
    data = load_sts(path, format, split, columns=PairColumns(sentence1_column, sentence2_column, score_column))
    encoder = load_encoder(model, pooling, backend=backend)
    result = evaluate_sts_data(encoder, data, batch_size=batch_size, progress=not json_out)
    if json_out:
        emit({**result.to_json(), "encode_backend": result.info["encode_backend"]})
    else:
        _print_sts(result)


def _print_retrieval(result: Any) -> None:
    s, info = result.scores, result.info
    typer.echo(
        f"{result.task}  split {result.split}  {result.n} queries  {info['documents']} documents  "
        f"index {info['factory']} ({info['metric']}, {info['backend']} search, "
        f"{info['encode_backend']['name']} encode)"
    )
    ks = sorted({int(k.rsplit("_", 1)[1]) for k in s if k.startswith("ndcg_at_")})
    columns = [("pipeline", s)] + ([("flat", s["flat"])] if "flat" in s else [])
    for label, scores in columns:
        typer.echo(f"\n{label:<10}" + "".join(f"{'@' + str(k):>8}" for k in ks))
        for metric, name in (("ndcg", "nDCG"), ("map", "MAP"), ("recall", "Recall"), ("precision", "P")):
            typer.echo(f"{name:<10}" + "".join(f"{_fmt(scores[f'{metric}_at_{k}']):>8}" for k in ks))
        if "mrr_at_10" in scores:
            typer.echo(f"{'MRR@10':<10}{_fmt(scores['mrr_at_10']):>8}")
    main = f"\nmain score (nDCG@10 x100): {result.main_score:.2f}"
    if "flat" in s:
        flat = s["flat"]["ndcg_at_10"]
        main += f"   flat {flat:.2f}   delta {result.main_score - flat:+.2f}"
    typer.echo(main)


def _missing_warnings(result: Any) -> None:
    docs, queries = result.scores.get("qrels_docs_missing", 0), result.scores.get("qrels_queries_missing", 0)
    if docs:
        _warn(f"{result.task}: {docs} judged document id(s) are not in the index; they count as never retrieved")
    if queries:
        _warn(f"{result.task}: {queries} judged query id(s) have no text in queries.jsonl; they were not scored")


@eval_app.command("retrieval")
def eval_retrieval(
    beir_dir: Annotated[Path, typer.Argument(help="A BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.")],
    split: Annotated[str, typer.Option("--split", help="qrels split to score.")] = "test",
    model: Model = None,
    pooling: Pooling = None,
    index_dir: Annotated[
        Path | None,
        typer.Option("--index-dir", help="Search this index if it exists, else build it here \\[default: a temp dir]."),
    ] = None,
    factory: Annotated[
        str | None,
        typer.Option("--factory", help="Flat, auto or a FAISS factory string for a new index \\[default: Flat]."),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Hits per query (at least 10).")] = 100,
    ignore_identical_ids: Annotated[
        bool, typer.Option("--ignore-identical-ids", help="Drop hits whose id equals the query id (ArguAna, Quora).")
    ] = False,
    compare_flat: Annotated[
        bool, typer.Option("--compare-flat", help="Also score exact search over the raw vectors.")
    ] = False,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF lists to visit \\[default: manifest's].")] = None,
    ef_search: Annotated[int | None, typer.Option("--ef-search", help="HNSW efSearch \\[default: manifest's].")] = None,
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu", help="Use faiss GPUs when present.")] = True,
    batch_size: BatchSize = 64,
    backend: EncodeBackend = "auto",
    json_out: Json = False,
) -> None:
    """Score retrieval on a BEIR folder through simtool's index: nDCG@10 (main), MAP, Recall, P @k, MRR@10, x100."""
    from simtool.encoder import load_encoder
    from simtool.errors import SimtoolError
    from simtool.evals.retrieval import evaluate_retrieval, load_beir

    for name, value in (("--nprobe", nprobe), ("--ef-search", ef_search), ("--batch-size", batch_size)):
        if value is not None and value <= 0:
            raise SimtoolError(f"{name} must be positive, got {value}")
    load_beir(beir_dir, split)  # fail on a bad folder before loading a model
    named = model is not None or pooling is not None
    encoder = load_encoder(model, pooling, backend=backend) if named else None
    params = {k: v for k, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    result = evaluate_retrieval(
        beir_dir,
        split=split,
        model=encoder,
        index_dir=index_dir,
        factory=factory,
        top_k=top_k,
        ignore_identical_ids=ignore_identical_ids,
        compare_flat=compare_flat,
        batch_size=batch_size,
        search_params=params or None,
        gpu=gpu,
        progress=not json_out,
        backend=backend,
    )
    if json_out:
        emit({**result.to_json(), "encode_backend": result.info["encode_backend"]})
    else:
        _print_retrieval(result)
        _missing_warnings(result)


@eval_app.command("suite")
def eval_suite(
    name: Annotated[str, typer.Argument(help="en-sts, en-retrieval or zh-sts.")],
    data_root: Annotated[Path, typer.Option("--data-root", help="Directory holding the datasets.")],
    model: Model = None,
    pooling: Pooling = None,
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="MTEB result JSONs (a directory or one file) to print deltas against."),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", help="Where report.md and report.json go \\[default: $SIMTOOL_HOME/evals/NAME]."),
    ] = None,
    batch_size: BatchSize = 64,
    backend: EncodeBackend = "auto",
    json_out: Json = False,
) -> None:
    """Run a named suite over whatever of its datasets exist under --data-root; write markdown + JSON reports."""
    from simtool.errors import SimtoolError
    from simtool.evals.suites import default_output_dir, load_reference, run_suite, suite_tasks

    if batch_size <= 0:
        raise SimtoolError(f"--batch-size must be positive, got {batch_size}")
    suite_tasks(name, data_root)  # unknown suite or missing root: fail before loading anything
    if reference is not None:
        load_reference(reference)
    report_box: list[Any] = []

    def on_result(result: Any) -> None:
        if json_out:
            return  # printed with the references once all are known
        typer.echo(f"{result.task:<16} {result.split:<6} n={result.n:<6} {result.main_metric} {result.main_score:.2f}")

    def on_skip(task: str, reason: str) -> None:
        if json_out:
            print(f"simtool: skipped {task}: {reason}", file=sys.stderr)
        else:
            typer.echo(f"{task:<16} skipped: {reason}")

    report = run_suite(
        name,
        data_root,
        model=model,
        pooling=pooling,
        reference=reference,
        batch_size=batch_size,
        progress=not json_out,
        on_result=on_result,
        on_skip=on_skip,
        backend=backend,
    )
    report_box.append(report)
    md, js = report.write(output_dir or default_output_dir(name))
    if json_out:
        for result in report.results:
            emit(report.result_json(result))
    else:
        typer.echo("")
        typer.echo(report.to_markdown())
        typer.echo(f"wrote {md} and {js}")
        for result in report.results:
            if result.info.get("factory") is not None:
                _missing_warnings(result)
