"""One check per value that simtool's functions take from their callers.

Each raises :class:`~simtool.errors.ParameterError` with a message that names the Python parameter and the
value given (the CLI turns the parameter into its flag, :func:`simtool.cli.common.flag_text`).
"""

from __future__ import annotations

from collections.abc import Sequence

from simtool.errors import ParameterError

METRICS = ("ip", "l2")
"""Vector index metrics: inner product (cosine on normalised vectors) and squared L2."""
POOLINGS = ("cls", "mean", "max", "last-avg", "first-last-avg")
"""The poolings :func:`simtool.encoder.load_encoder` can set."""


def check_positive(name: str, value: float) -> None:
    """``name`` must be > 0 (``k``, ``batch_size``, ``max_seq_length``, ...)."""
    if not value > 0:
        raise ParameterError(f"{name} must be positive, got {value}")


def check_non_negative(name: str, value: float) -> None:
    """``name`` must be >= 0 (loss weights)."""
    if not value >= 0:
        raise ParameterError(f"{name} must be >= 0, got {value}")


def check_one_of(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_k(k: int) -> None:
    """Hits per query."""
    check_positive("k", k)


def check_batch_size(batch_size: int) -> None:
    """Texts per encoder forward pass."""
    check_positive("batch_size", batch_size)


def check_metric(metric: str) -> None:
    check_one_of("metric", metric, METRICS)


def check_pooling(pooling: str | None) -> None:
    """``None`` (the model's own pooling) or one of :data:`POOLINGS`."""
    if pooling is not None and pooling not in POOLINGS:
        raise ParameterError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
