"""Issue 15 "one voice": the library names Python parameters, the CLI shows the same error with its flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtool.cli.common import cli_message, flag_text
from simtool.errors import SimtoolError
from simtool.training import TrainConfig
from tests.conftest import run_cli as run


def test_library_names_parameter_and_cli_names_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SimtoolError) as e:
        TrainConfig(recipe="simcse-unsup", data="x", output="y", max_seq_length=0).validate()
    assert str(e.value) == "max_seq_length must be positive, got 0"
    data = tmp_path / "t.txt"
    data.write_text("a sentence\nanother one\n")
    code, out, err = run(
        capsys,
        "train",
        "--recipe",
        "simcse-unsup",
        "--data",
        str(data),
        "-o",
        str(tmp_path / "o"),
        "--max-seq-length",
        "0",
    )
    assert (code, out, err) == (2, "", "simtool: error: --max-seq-length must be positive, got 0\n")
    assert not (tmp_path / "o").exists()


def test_flag_table_comes_from_the_commands() -> None:
    # Flags from several commands, including ones whose flag differs from the parameter (json_out -> --json).
    assert (
        flag_text("json_out and on_duplicate='skip' and top_k must")
        == "--json and --on-duplicate skip and --top-k must"
    )
    assert flag_text("unknown recipe 'x'; resume=True: a") == "unknown --recipe 'x'; --resume: a"


def test_plain_words_and_unknown_names_stay() -> None:
    flags = {"model": "--model", "output": "--output", "batch_size": "--batch-size"}
    # "model" and "output" as English words are not parameters; an unknown identifier is left alone.
    msg = "not a RoFormer-Sim model; choose another output directory; some_name must be set"
    assert cli_message(msg, flags) == msg
    assert cli_message("model='m' needs batch_size=8", flags) == "--model m needs --batch-size 8"
