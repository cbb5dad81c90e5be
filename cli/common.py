"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

IndexDir = Annotated[
    Path | None,
    typer.Option("--index-dir", help="Index directory \\[default: $SIMTOOL_HOME/index, SIMTOOL_HOME=~/.simtool]."),
]
Model = Annotated[
    str | None,
    typer.Option("--model", help="Model: local directory or cached hub name \\[default: all-MiniLM-L6-v2]."),
]
Pooling = Annotated[
    str | None,
    typer.Option("--pooling", help="cls, mean, max, last-avg or first-last-avg \\[default: the model's]."),
]


def _check_backend(value: str) -> str:
    """Reject an unknown ``--backend`` at parse time, before any corpus is read or model loaded."""
    from simtool.backends import backend_names
    from simtool.errors import SimtoolError

    if value not in backend_names():
        # `search --backend` named the search engine before issue 16 made it the encode backend everywhere
        hint = f"; the search engine is --search-backend {value}" if value == "faiss" else ""
        raise SimtoolError(f"unknown --backend {value!r}; choose one of {', '.join(backend_names())}{hint}")
    return value


# The one encode-backend option of every command that encodes; SIMTOOL_BACKEND sets its default.
EncodeBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        envvar="SIMTOOL_BACKEND",
        callback=_check_backend,
        help="Encode backend: auto, torch, torch-bf16, openvino, openvino-bf16 or openvino-int8 (README "
        "'Encode backends'); on an existing index, within its tolerance.",
    ),
]


Json = Annotated[bool, typer.Option("--json", help="Print one JSON object (quiet, for scripts).")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Texts per encoder forward pass.")]
TextColumn = Annotated[str | None, typer.Option("--text-column", help="Field holding the text \\[default: text].")]
IdColumn = Annotated[str | None, typer.Option("--id-column", help="Field holding the id \\[default: _id or id].")]
TitleColumn = Annotated[str | None, typer.Option("--title-column", help="Field holding the title \\[default: title].")]


_reserved: TextIO | None = None


def reserve_stdout() -> None:
    """Keep stdout for this command's report: anything else printed to ``sys.stdout`` goes to stderr.

    For Ray: its driver prints raylet notices (such as an earlier job's worker having died) to whatever
    ``sys.stdout`` is when they arrive, from a thread, for as long as the process is connected; on stdout
    they would break ``--json``'s one-line report. :func:`simtool.cli.main` releases it when the command ends.
    """
    global _reserved
    if _reserved is None:
        _reserved, sys.stdout = sys.stdout, sys.stderr


def release_stdout() -> None:
    global _reserved
    if _reserved is not None:
        sys.stdout, _reserved = _reserved, None


def report_stream() -> TextIO:
    """Where the command's own output goes: stdout, also while :func:`reserve_stdout` holds it."""
    return _reserved or sys.stdout


def emit(obj: Any) -> None:
    """One JSON object on one line of stdout."""
    report_stream().write(json.dumps(obj, ensure_ascii=False) + "\n")


def corpus_fields(text: str | None, id_: str | None, title: str | None) -> Any:
    from simtool.index import CorpusFields

    return CorpusFields(text=text, id=id_, title=title)


def print_hits(query: str, hits: list[Any]) -> None:
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


# How a library message names a parameter that the CLI should show as its flag: an identifier with an
# underscore (never an English word), ``name=value``, ``unknown name``, or ``name must/needs/applies``.
# Plain words such as "model" or "output" elsewhere in a message stay as they are.
_PARAM = re.compile(
    r"(?P<pre>\bunknown )?(?<![-\w])(?P<name>[a-z][a-z0-9_]*)\b"
    r"(?:=(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;:)]+)|(?P<verb>(?= (?:must|needs|applies)\b)))?"
)


def param_flags(command: Any) -> dict[str, str]:
    """Python parameter name -> CLI flag for every option of a click ``command`` and its subcommands (first wins).

    Duck-typed (``.params``, ``.opts``, ``.commands``): typer ships its own copy of click's classes.
    """
    table: dict[str, str] = {}
    stack = [command]
    while stack:
        cmd = stack.pop(0)
        for p in cmd.params:
            longs = [o for o in p.opts if o.startswith("--")]  # arguments have none
            if p.name and longs:
                table.setdefault(p.name, longs[0])
        stack.extend(getattr(cmd, "commands", {}).values())
    return table


def cli_message(message: str, flags: dict[str, str]) -> str:
    """Rewrite a library error's parameter names into ``flags``' CLI flags.

    ``batch_size must be positive`` -> ``--batch-size must be positive``; ``on_duplicate='skip'`` ->
    ``--on-duplicate skip``; ``resume=True`` -> ``--resume``.
    """

    def swap(m: re.Match[str]) -> str:
        name, value = m["name"], m["value"]
        flag = flags.get(name)
        if flag is None or not ("_" in name or value is not None or m["pre"] or m["verb"] is not None):
            return m[0]
        if value is None:
            return (m["pre"] or "") + flag
        if value in ("True", "None"):
            return (m["pre"] or "") + flag
        return f"{m['pre'] or ''}{flag} {value.strip(chr(39) + chr(34))}"

    return _PARAM.sub(swap, message)


def flag_text(message: str) -> str:
    """``cli_message`` with the flags of the whole ``simtool`` app: the one place errors get their flags."""
    from simtool.cli.app import app  # lazily: app imports this module

    return cli_message(message, param_flags(typer.main.get_command(app)))


class _StderrHandler(logging.Handler):
    """The library's warnings, and training's progress lines, on the terminal above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        if record.levelno < logging.WARNING and record.name != _TRAINING:
            return
        prefix = "simtool: " if record.levelno >= logging.WARNING else ""
        # tqdm.write clears and redraws a live bar; sys.stderr looked up now, not at set-up (captured streams)
        tqdm.write(prefix + record.getMessage(), file=sys.stderr)


_TRAINING = "simtool.training.loop"


def show_library_logs() -> None:
    """Route ``simtool`` warnings and training's eval lines to stderr; idempotent, sets no level on ``simtool``."""
    lib = logging.getLogger("simtool")
    if not any(isinstance(h, _StderrHandler) for h in lib.handlers):
        lib.addHandler(_StderrHandler())
    training = logging.getLogger(_TRAINING)
    if training.level == logging.NOTSET:
        training.setLevel(logging.INFO)
