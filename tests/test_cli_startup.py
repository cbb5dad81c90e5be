"""The CLI starts without the heavy stack, and its help shows every default."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import typer

HEAVY = ("torch", "transformers", "sentence_transformers", "faiss")


def _loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it left in ``sys.modules``."""
    probe = f"{code}\nimport sys\nprint('LOADED=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("LOADED=")][-1]
    return [m for m in line.removeprefix("LOADED=").split(",") if m]


@pytest.mark.timeout(120)
def test_importing_the_cli_pulls_in_no_torch() -> None:
    assert _loaded_after("import simtool.cli.app") == []


@pytest.mark.timeout(120)
def test_the_evals_import_the_encoder_only_to_encode() -> None:
    assert _loaded_after("import simtool.evals, simtool.evals.readers, simtool.evals.suites") == []


@pytest.mark.timeout(120)
def test_import_simtool_is_lazy_but_exports_resolve() -> None:
    assert _loaded_after("import simtool; simtool.SimtoolError; simtool.__version__") == []
    import simtool

    assert simtool.Retriever.__name__ == "Retriever" and callable(simtool.build_index)
    with pytest.raises(AttributeError):
        _ = simtool.no_such_name  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
def test_every_help_runs_without_torch() -> None:
    from simtool.cli.app import app

    paths = [list(p) for p in _command_paths(typer.main.get_command(app))]
    assert len(paths) > 10
    code = (
        "import sys\nfrom simtool.cli import main\n"
        f"for argv in {paths!r}:\n"
        "    try:\n        main([*argv, '--help'])\n    except SystemExit as e:\n        assert not e.code, argv\n"
    )
    assert _loaded_after(code) == []


def _command_paths(cmd: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(cmd, "commands"):  # a group (typer vendors click, so no isinstance against click.Group)
        for name, sub in cmd.commands.items():
            paths += _command_paths(sub, (*prefix, name))
    return paths


def test_index_build_help_shows_the_default_index_dir(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import run_cli

    code, out, _ = run_cli(capsys, "index", "build", "--help")
    flat = re.sub(r"[\s│]+", " ", out)  # the help box wraps lines
    assert code == 0 and "[default: $SIMTOOL_HOME/index" in flat, flat


def test_no_help_text_hides_a_default_as_rich_markup() -> None:
    """rich reads an unescaped ``[default: x]`` as a tag and drops it; help strings must write ``\\[default: x]``."""
    from simtool.cli.app import app

    hidden = []
    for path in _command_paths(typer.main.get_command(app)):
        cmd: Any = typer.main.get_command(app)
        for name in path:
            cmd = cmd.commands[name]
        for param in cmd.params:
            text = getattr(param, "help", None) or ""
            if re.search(r"(?<!\\)\[default", text):
                hidden.append(f"{' '.join(path)} {param.name}")
    assert hidden == []


@pytest.mark.timeout(180)
def test_searching_an_index_by_vector_loads_no_torch(tiny_st: Any, small_corpus: Any, tmp_path: Any) -> None:
    import ctypes.util

    from simtool.index import build_index

    if ctypes.util.find_library("cuda") is not None:
        pytest.skip("a CUDA driver is installed: choosing the search device rightly asks torch")
    index = tmp_path / "idx"
    build_index(small_corpus, index, model=str(tiny_st), factory="Flat", gpu=False, progress=False)
    code = (
        "import numpy as np; from simtool.retriever import Retriever\n"
        f"r = Retriever.load({str(index)!r}, load_model=False)\n"
        "assert len(r.hits_for(*r.search_vectors(np.ones((1, r.manifest.dim), np.float32), 3))[0]) == 3"
    )
    assert _loaded_after(code) == ["faiss"]  # the ~1 s torch import was most of a 1M-row open (issue 10)
