"""What the benchmarks share: the offline environment, the repo on ``sys.path``, rotated rounds, ratio summaries.

Import it first in a benchmark script (``from harness import ...``; a script's own folder is on ``sys.path``), so
that ``HF_HUB_OFFLINE`` is set before anything loads a model. Machines here are noisy, so every run is repeated in
rounds with the order rotated each round, and speed is reported as medians and per-round ratios.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """``names`` started at ``round_index`` (mod its length): each method runs first in turn."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def rotated_rounds(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Seconds that each run returns, per round, the order rotated every round."""
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name in rotated(list(runs), r):
            seconds[name].append(runs[name]())
    return seconds


def ratio_summary(seconds: dict[str, list[float]], base: str) -> dict[str, dict[str, object]]:
    """Seconds per round, their medians, and each run's per-round time ratio against ``base`` with its median."""
    ratios = {k: [s / b for s, b in zip(v, seconds[base], strict=True)] for k, v in seconds.items() if k != base}
    return {
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "median_seconds": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
        f"time_ratio_vs_{base}": {k: [round(x, 3) for x in v] for k, v in ratios.items()},
        f"median_time_ratio_vs_{base}": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
    }


def print_ratio_summary(summary: dict[str, dict[str, object]], base: str, unit: str = "s") -> None:
    """The human-readable lines of :func:`ratio_summary`."""
    for name, values in summary["seconds"].items():
        assert isinstance(values, list)
        print(f"  {name:>8}: median {statistics.median(values):7.2f} {unit}  rounds: " + ", ".join(map(str, values)))
    for name, values in summary[f"time_ratio_vs_{base}"].items():
        assert isinstance(values, list)
        print(f"  {name} / {base} time: median {statistics.median(values):.2f}x  per round: "
              + ", ".join(f"{x:.2f}" for x in values))  # fmt: skip
