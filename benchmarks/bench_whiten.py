"""Whitening fit speed: the streamed float64 fit of 1M x 384 float32 vectors read from an .npy on disk,
against one numpy ``X.T @ X`` on the same data in memory (the issue's goal: ratio ≤ 2).

The vectors are random (Gaussian with a decaying spectrum), labelled as such: the fit's cost does
not depend on their values. Peak extra memory of the fit is reported from tracemalloc (numpy
allocations), to show it is O(d² + chunk), not O(n·d).

    python benchmarks/bench_whiten.py [--n 1000000] [--dim 384] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from simtool.reduce import Whitening


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, args.dim))
        scale = np.logspace(0, -2, args.dim).astype(np.float32)
        for start in range(0, args.n, 100_000):
            m = min(100_000, args.n - start)
            out[start : start + m] = rng.standard_normal((m, args.dim), dtype=np.float32) * scale + 0.1
        out.flush()
        del out
        x = np.load(path)  # in memory, for the numpy reference
        fit_times, gram_times, peaks = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            x.T @ x
            gram_times.append(time.perf_counter() - t)
            streamed = np.load(path, mmap_mode="r")
            tracemalloc.start()
            t = time.perf_counter()
            Whitening(args.dim, 0.5).fit(streamed)
            fit_times.append(time.perf_counter() - t)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    fit, gram = statistics.median(fit_times), statistics.median(gram_times)
    result = {
        "data": f"random float32 ({args.n} x {args.dim}), streamed from an .npy memmap",
        "fit_seconds_median": round(fit, 3),
        "numpy_xtx_seconds_median": round(gram, 3),
        "ratio_fit_over_xtx": round(fit / gram, 3),
        "fit_peak_numpy_mib": round(max(peaks) / 2**20, 1),
        "data_mib": round(args.n * args.dim * 4 / 2**20, 1),
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
        print(f"goal: ratio <= 2.0 -> {'met' if fit / gram <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
