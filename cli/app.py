"""The typer app: one line registers each command module; ``main`` turns user errors into one line.

Errors the user can fix (:class:`simtool.SimtoolError`, usage errors) print one line on
stderr and exit with status 2; nothing is written in that case.
"""

from __future__ import annotations

import os
import sys

import typer

from simtool.cli import data_cmd, export_cmd, long_cmd
from simtool.cli.common import flag_text, release_stdout, report_stream, show_library_logs
from simtool.cli.demo_cmd import demo
from simtool.cli.encode_cmd import encode
from simtool.cli.eval_cmd import eval_app
from simtool.cli.generate_cmd import generate
from simtool.cli.index_cmd import index_app
from simtool.cli.reduce_cmd import dims, project, whiten
from simtool.cli.search_cmd import search
from simtool.cli.serve_cmd import serve
from simtool.cli.train_cmd import train as train_command
from simtool.errors import SimtoolError

app = typer.Typer(
    name="simtool",
    help="Sentence embeddings and retrieval: encode, index, search.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.command("train")(train_command)
app.command()(encode)
app.command()(search)
app.command()(demo)
app.command()(whiten)
app.command()(project)
app.command()(dims)
data_cmd.register(app)
long_cmd.register(app)
app.command()(serve)
app.command()(generate)
app.command()(export_cmd.export)


def _quiet_libraries() -> None:
    # Environment switches rather than calls, so that start-up (and --help) imports no transformers.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on the hub
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # README "Encode backends": idle threads sleep, not spin
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own tqdm follows this switch
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # already imported (in-process callers): the switches above were read at import
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    _quiet_libraries()
    show_library_logs()
    try:
        app(args=argv, prog_name="simtool", standalone_mode=False)
    except SimtoolError as e:  # the library names Python parameters; the user typed flags
        print(f"simtool: error: {flag_text(str(e))}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("simtool: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: unknown command, bad option value
        print(f"simtool: error: {e.format_message()}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), report_stream().fileno())  # `simtool search ... | head`
        sys.exit(0)
    finally:
        release_stdout()
