"""Typer commands. Each one parses arguments, calls the library, and prints text or ``--json``.

Errors the user can fix (:class:`simtool.SimtoolError`, usage errors) print one line on
stderr and exit with status 2; nothing is written in that case.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli import data_cmd
from simtool.cli.common import (
    BatchSize,
    IdColumn,
    IndexDir,
    Json,
    Model,
    Pooling,
    TextColumn,
    TitleColumn,
    emit,
)
from simtool.cli.eval_cmd import eval_app
from simtool.cli.reduce_cmd import dims, project, whiten
from simtool.cli.train_cmd import train as train_command
from simtool.errors import SimtoolError

app = typer.Typer(
    name="simtool",
    help="Sentence embeddings and retrieval: encode, index, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
index_app = typer.Typer(help="Build, extend and inspect an index directory.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.command("train")(train_command)


def _fields(text: str | None, id_: str | None, title: str | None) -> Any:
    from simtool.index import CorpusFields

    return CorpusFields(text=text, id=id_, title=title)


@app.command()
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
    json_out: Json = False,
) -> None:
    """Encode a corpus file into a float32 .npy matrix plus its ids."""
    from simtool.encoder import embedding_dim, encode_file, load_encoder

    fields = _fields(text_column, id_column, title_column)
    n = fields.count(input)
    encoder = load_encoder(model, pooling, None, max_seq_length)
    started = time.perf_counter()
    ids_path = encode_file(lambda: fields.read(input), n, output, encoder, batch_size=batch_size, progress=not json_out)
    seconds = time.perf_counter() - started
    result = {
        "output": str(output),
        "ids": str(ids_path),
        "n": n,
        "dim": embedding_dim(encoder),
        "model": encoder.simtool_source,
        "pooling": encoder.simtool_pooling,
        "seconds": round(seconds, 3),
        "texts_per_second": round(n / seconds, 1),
    }
    if json_out:
        emit(result)
    else:
        typer.echo(
            f"wrote {n} x {result['dim']} float32 to {output} (ids: {ids_path}) "
            f"in {seconds:.1f}s, {result['texts_per_second']:.0f} texts/s"
        )


def _print_manifest(info: dict[str, Any]) -> None:
    m = info["model"]
    lines = [
        f"index      {info.get('index_dir', '')}",
        f"documents  {info['count']}",
        f"model      {m['name_or_path']} (fingerprint {m['fingerprint']}, pooling {m['pooling']})",
        f"vectors    dim {info['dim']}, metric {info['metric']}",
        f"faiss      {info['factory']}  {' '.join(f'{k}={v}' for k, v in info['search_params'].items())}".rstrip(),
        f"reducers   {', '.join(r.get('kind', '?') for r in info['reducers']) or 'none'}",
        f"updated    {info['updated_at']}",
    ]
    if "bytes_on_disk" in info:
        lines.append(
            f"size       {info['bytes_on_disk'] / 2**20:.1f} MiB" + ("  (checksums OK)" if info["verified"] else "")
        )
    typer.echo("\n".join(lines))


@index_app.command("build")
def index_build(
    corpus: Annotated[Path, typer.Argument(help="Corpus: .txt, .jsonl (BEIR), .csv or .tsv, optionally .gz.")],
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
        float | None, typer.Option("--memory-budget", help="GiB the index may use (auto factory) [default: RAM/2].")
    ] = None,
    text_column: TextColumn = None,
    id_column: IdColumn = None,
    title_column: TitleColumn = None,
    json_out: Json = False,
) -> None:
    """Encode a corpus and build a new index directory (replaces an existing one atomically)."""
    from simtool.index import build_index, index_info

    budget = None if memory_budget_gb is None else int(memory_budget_gb * 2**30)
    started = time.perf_counter()
    build_index(
        corpus,
        index_dir,
        model=model,
        pooling=pooling,
        max_seq_length=max_seq_length,
        factory=factory,
        metric=metric,
        gpu=gpu,
        batch_size=batch_size,
        memory_budget=budget,
        fields=_fields(text_column, id_column, title_column),
        progress=not json_out,
    )
    info = index_info(index_dir, verify=False)
    info["seconds"] = round(time.perf_counter() - started, 3)
    if json_out:
        emit(info)
    else:
        _print_manifest(info)
        typer.echo(f"built in {info['seconds']:.1f}s")


@index_app.command("add")
def index_add(
    corpus: Annotated[Path, typer.Argument(help="Corpus with new documents, same formats as build.")],
    index_dir: IndexDir = None,
    model: Annotated[str | None, typer.Option("--model", help="Must be the index's model (checked).")] = None,
    on_duplicate: Annotated[
        str, typer.Option("--on-duplicate", help="An id already indexed: 'error' (nothing written) or 'skip'.")
    ] = "error",
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu")] = True,
    batch_size: BatchSize = 64,
    text_column: TextColumn = None,
    id_column: IdColumn = None,
    title_column: TitleColumn = None,
    json_out: Json = False,
) -> None:
    """Add documents to an existing index, encoded with the index's own model."""
    from simtool.index import add_to_index

    manifest, added, skipped = add_to_index(
        corpus,
        index_dir,
        model=model,
        on_duplicate=on_duplicate,
        gpu=gpu,
        batch_size=batch_size,  # type: ignore[arg-type]
        fields=_fields(text_column, id_column, title_column),
        progress=not json_out,
    )
    if json_out:
        emit({"added": added, "skipped": skipped, "count": manifest.count})
    else:
        typer.echo(f"added {added} documents, skipped {skipped} already indexed; the index holds {manifest.count}")


@index_app.command("info")
def index_info_cmd(
    index_dir: IndexDir = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file's sha256.")] = True,
    json_out: Json = False,
) -> None:
    """Describe an index: model, factory, counts, files."""
    from simtool.index import index_info

    info = index_info(index_dir, verify=verify)
    if json_out:
        emit(info)
    else:
        _print_manifest(info)


def _print_hits(query: str, hits: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"query: {query}"), title_justify="left", show_lines=False, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("title / text", ratio=1)
    for h in hits:
        snippet = h.text if len(h.text) <= 160 else h.text[:157] + "..."
        cell = Text.assemble((h.title, "bold"), "\n", snippet) if h.title else Text(snippet)
        table.add_row(str(h.rank), f"{h.score:.4f}", Text(h.id), cell)
    Console().print(table)


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="The query text.")] = None,
    queries: Annotated[
        Path | None, typer.Option("--queries", help="A file of queries (.txt one per line, or .jsonl with text).")
    ] = None,
    index_dir: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.")] = 10,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="IVF lists to visit [default: manifest's].")] = None,
    ef_search: Annotated[int | None, typer.Option("--ef-search", help="HNSW efSearch [default: manifest's].")] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, faiss or torch (exact).")] = "auto",
    batch_size: BatchSize = 64,
    json_out: Json = False,
) -> None:
    """Search an index; with --json one object per query, one per line."""
    from simtool.corpus import read_queries
    from simtool.retriever import Retriever

    if (query is None) == (queries is None):
        raise SimtoolError("give either a QUERY argument or --queries FILE")
    if k <= 0:
        raise SimtoolError(f"-k must be positive, got {k}")
    for name, value in (("--nprobe", nprobe), ("--ef-search", ef_search)):
        if value is not None and value <= 0:
            raise SimtoolError(f"{name} must be positive, got {value}")
    batch = [(None, query)] if query is not None else read_queries(queries)  # type: ignore[arg-type]
    params = {k_: v for k_, v in (("nprobe", nprobe), ("efSearch", ef_search)) if v is not None}
    with Retriever.load(index_dir, backend=backend, search_params=params) as retriever:  # type: ignore[arg-type]
        results = []
        for start in range(0, len(batch), 1024):
            chunk = batch[start : start + 1024]
            results.extend(retriever.search([text for _, text in chunk], k))
    for (qid, text), hits in zip(batch, results, strict=True):
        if json_out:
            obj: dict[str, Any] = {"query": text, "results": [h.to_json() for h in hits]}
            if qid is not None:
                obj = {"query_id": qid, **obj}
            emit(obj)
        else:
            _print_hits(text, hits)


@app.command()
def demo(
    query: Annotated[str, typer.Option("--query", help="The sample query.")] = "how do I handle an exception",
    index_dir: Annotated[Path | None, typer.Option("--index-dir", help="[default: $SIMTOOL_HOME/demo-index]")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k")] = 5,
    json_out: Json = False,
) -> None:
    """Index the bundled sample corpus (Python's reference topics) with the default model and search it."""
    from simtool.config import SAMPLE_CORPUS as corpus
    from simtool.config import simtool_home
    from simtool.index import build_index
    from simtool.retriever import Retriever

    target = index_dir or simtool_home() / "demo-index"
    manifest = build_index(corpus, target, progress=not json_out)
    if not json_out:
        typer.echo(f"indexed {manifest.count} documents from {corpus.name} into {target} ({manifest.factory})")
    with Retriever.load(target) as retriever:
        hits = retriever.search(query, k)
    if json_out:
        emit({"query": query, "results": [h.to_json() for h in hits]})
    else:
        _print_hits(query, hits)


app.command()(whiten)
app.command()(project)
app.command()(dims)
data_cmd.register(app)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on the hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    _quiet_libraries()
    try:
        app(args=argv, prog_name="simtool", standalone_mode=False)
    except SimtoolError as e:
        print(f"simtool: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("simtool: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: unknown command, bad option value
        print(f"simtool: error: {e.format_message()}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # `simtool search ... | head`
        sys.exit(0)
