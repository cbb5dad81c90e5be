"""One validator per value: messages name the Python parameter and the value given."""

from __future__ import annotations

import pytest

from simtool.errors import SimtoolError
from simtool.validate import (
    POOLINGS,
    check_batch_size,
    check_k,
    check_metric,
    check_one_of,
    check_pooling,
    check_positive,
)


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
