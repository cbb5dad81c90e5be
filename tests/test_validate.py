"""One validator per value: messages name the Python parameter and the value given."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from simtool.errors import ParameterError, SimtoolError
from simtool.validate import (
    POOLINGS,
    check_batch_size,
    check_k,
    check_metric,
    check_non_negative,
    check_one_of,
    check_pooling,
    check_positive,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", [0, -1, 0.0, float("nan")])
def test_positive(value: float) -> None:
    with pytest.raises(SimtoolError, match=rf"^max_queue must be positive, got {value}$"):
        check_positive("max_queue", value)


def test_each_value_has_its_check() -> None:
    check_k(1), check_batch_size(64), check_metric("l2"), check_pooling(None), check_positive("x", 0.5)
    for pooling in POOLINGS:
        check_pooling(pooling)
    with pytest.raises(SimtoolError, match=r"^k must be positive, got 0$"):
        check_k(0)
    with pytest.raises(SimtoolError, match=r"^batch_size must be positive, got -2$"):
        check_batch_size(-2)
    with pytest.raises(SimtoolError, match=r"^metric must be one of ip, l2, got 'cos'$"):
        check_metric("cos")
    with pytest.raises(
        SimtoolError, match=r"^unknown pooling 'avg'; choose one of cls, mean, max, last-avg, first-last-avg$"
    ):
        check_pooling("avg")
    with pytest.raises(SimtoolError, match=r"^on_duplicate must be one of error, skip, got 'x'$"):
        check_one_of("on_duplicate", "x", ("error", "skip"))


def test_the_cli_shows_the_flag() -> None:
    from simtool.cli.common import cli_message

    with pytest.raises(SimtoolError) as e:
        check_batch_size(0)
    assert cli_message(str(e.value), {"batch_size": "--batch-size"}) == "--batch-size must be positive, got 0"


def test_a_bad_argument_is_both_simtool_error_and_value_error() -> None:
    """Python callers catch ValueError as for any library; the CLI and service catch SimtoolError."""
    for check, value in ((check_positive, 0), (check_non_negative, -0.5)):
        with pytest.raises(ParameterError) as e:
            check("weight", value)
        assert isinstance(e.value, ValueError) and isinstance(e.value, SimtoolError)
    assert str(e.value) == "weight must be >= 0, got -0.5"
    check_non_negative("weight", 0.0)


# Raised at import or registration time by simtool's own code, never by a caller's input.
DEVELOPER_ERRORS = {("simtool/backends/registry.py", "RuntimeError"), ("simtool/reduce/base.py", "TypeError")}


def test_the_library_raises_no_bare_builtin_errors() -> None:
    """One voice: what a caller can cause is a SimtoolError subclass (the CLI prints it as one line)."""
    builtin = {"ValueError", "TypeError", "RuntimeError", "KeyError", "Exception"}
    found = []
    for root in ("simtool", "evals"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                    name = getattr(node.exc.func, "id", None)
                    if name in builtin and (rel, name) not in DEVELOPER_ERRORS:
                        found.append(f"{rel}:{node.lineno}: raise {name}")
    assert not found, "\n".join(found)
