"""Benchmark ``simtool encode --ray`` (Ray Data, encoder actor pool) against the in-process ``simtool encode``.

The same SciFact documents (``<shared data>/beir/scifact/corpus.jsonl``, first ``--docs``) are encoded with the
default model three ways in each round, order rotated every round:

* ``single``: load the model, ``encode_file`` in this process (torch's threads on every core);
* ``ray1`` / ``ray2``: ``encode_file_ray`` with 1 / 2 encoder actors on a local cluster started once
  (``ray.init(num_cpus=<cores>)``), each actor loading the model itself and using one torch thread.

Every figure is end to end (model loading included, as a user runs the command). Prints texts/s of each, per-round
ratios against ``single`` and their medians. On a 2-core machine shared with other jobs the Ray runs pay actor
start-up and model loading per job, which a large corpus amortises and a small one does not. Run::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_distributed.py [--docs 1000 --rounds 3 --json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import ratio_summary, rotated_rounds

from tests.conftest import shared_data_dir


def _corpus(n: int, directory: Path) -> Path:
    data = shared_data_dir()
    if data is None:
        sys.exit("bench_distributed: needs ../shared/data (beir/scifact/corpus.jsonl)")
    lines = (data / "beir" / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    path = directory / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    from simtool.corpus import read_documents
    from simtool.distributed import RayOptions, encode_file_ray
    from simtool.encoder import encode_file, load_encoder

    cores = os.cpu_count() or 1
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    tmp = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    corpus = _corpus(args.docs, tmp)
    n = sum(1 for _ in read_documents(corpus))

    def single() -> float:
        started = time.perf_counter()
        encoder = load_encoder(None, None, "cpu")
        encode_file(lambda: read_documents(corpus), n, tmp / "single.npy", encoder, batch_size=args.batch_size,
                    progress=False)  # fmt: skip
        return time.perf_counter() - started

    def on_ray(workers: int) -> float:
        started = time.perf_counter()
        encode_file_ray([corpus], tmp / f"ray{workers}.npy", options=RayOptions(workers=workers, batch_size=256),
                        batch_size=args.batch_size, progress=False)  # fmt: skip
        return time.perf_counter() - started

    import numpy as np

    runs = {"single": single, "ray1": lambda: on_ray(1), "ray2": lambda: on_ray(2)}
    seconds = rotated_rounds(runs, args.rounds)
    for name in ("ray1", "ray2"):  # the timing is only meaningful if the outputs are the same
        np.testing.assert_allclose(np.load(tmp / f"{name}.npy"), np.load(tmp / "single.npy"), atol=1e-5)
    summary = ratio_summary(seconds, "single")
    result = {
        "docs": n,
        "cores": cores,
        "rounds": args.rounds,
        "median_texts_per_second": {k: round(n / statistics.median(v), 1) for k, v in seconds.items()},
        **summary,
    }
    ray.shutdown()
    if args.json:
        print(json.dumps(result))
        return
    print(f"{n} SciFact docs, default model, {cores} cores, {args.rounds} rounds (end to end, model load included)")
    for name, values in seconds.items():
        print(f"  {name:>6}: median {n / statistics.median(values):7.1f} texts/s  rounds(s): "
              + ", ".join(f"{s:.1f}" for s in values))  # fmt: skip
    for name, values in summary["time_ratio_vs_single"].items():
        print(f"  {name} / single time: median {statistics.median(values):.2f}x  per round: "
              + ", ".join(f"{x:.2f}" for x in values))  # fmt: skip


if __name__ == "__main__":
    main()
