"""The end-to-end effect of each encode backend, through the CLI as a user runs it.

Per backend (``--backends``), in an order rotated every round:

* ``simtool index build`` of the SciFact corpus (5,183 abstracts; ``<shared data>/beir/scifact``), wall seconds;
* ``simtool eval retrieval`` of SciFact test through that index (queries encoded with the same backend): nDCG@10,
  against the published all-MiniLM-L6-v2 figure 64.51 (issue goal for ``openvino-int8``: within 0.3);
* ``simtool eval sts`` on STS-B test, wall seconds and cosine Spearman (published 82.03).

Every backend loads one model directory: a ``simtool export --backend openvino-int8`` of the default model (built
once before the rounds, built-in calibration, accuracy guard on, not timed), which is a normal
sentence-transformers directory beside the int8 graph, so the fp32, bf16 and OpenVINO backends read the same
weights. Wall times include process start-up and model load, as a user sees them. Run::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_backends_e2e.py [--rounds 1 --backends auto,torch --json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import rotated

from tests.conftest import shared_data_dir

PUBLISHED = {"scifact_ndcg_at_10": 64.51, "stsb_test_spearman": 82.03}  # MTEB, all-MiniLM-L6-v2
SIMTOOL = [sys.executable, "-m", "simtool"]


def _run(args: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds and the ``--json`` object (the last stdout line) of one CLI call."""
    started = time.perf_counter()
    done = subprocess.run([*SIMTOOL, *args, "--json"], capture_output=True, text=True, env=os.environ.copy())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench_backends_e2e: `simtool {' '.join(args)}` failed:\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,torch-bf16,openvino,openvino-int8,auto")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        sys.exit("bench_backends_e2e: needs ../shared/data (beir/scifact, stsb)")
    scifact, stsb = data / "beir" / "scifact", data / "stsb" / "original"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench-backends-e2e-"))
    model = tmp / "minilm-int8"
    export_seconds, export = _run(["export", "all-MiniLM-L6-v2", "--backend", "openvino-int8", "-o", str(model)])

    runs: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    for r in range(args.rounds):
        for backend in rotated(backends, r):
            index = tmp / f"index-{backend}"
            shutil.rmtree(index, ignore_errors=True)
            common = ["--backend", backend]
            build_s, _ = _run(["index", "build", str(scifact / "corpus.jsonl"), "--index-dir", str(index),
                               "--model", str(model), *common])  # fmt: skip
            _, retrieval = _run(["eval", "retrieval", str(scifact), "--index-dir", str(index), *common])
            sts_s, sts = _run(["eval", "sts", str(stsb), "--model", str(model), *common])
            runs[backend].append({
                "index_build_s": round(build_s, 2),
                "scifact_ndcg_at_10": round(retrieval["main_score"], 2),
                "eval_sts_s": round(sts_s, 2),
                "stsb_test_spearman": round(sts["main_score"], 2),
            })  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)

    base = "torch" if "torch" in backends else backends[0]
    result: dict[str, Any] = {"cores": os.cpu_count(), "rounds": args.rounds, "published": PUBLISHED,
                              "export_seconds": round(export_seconds, 1), "export": export, "runs": runs}  # fmt: skip
    medians = {b: {k: statistics.median(run[k] for run in rs) for k in rs[0]} for b, rs in runs.items()}
    result["medians"] = medians
    result[f"median_time_ratio_vs_{base}"] = {
        b: {k: round(statistics.median(x[k] / y[k] for x, y in zip(rs, runs[base], strict=True)), 3)
            for k in ("index_build_s", "eval_sts_s")}
        for b, rs in runs.items()
    }  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"{os.cpu_count()} cores, {args.rounds} round(s); published: SciFact nDCG@10 64.51, STS-B 82.03")
    print(f"{'backend':>14} {'index build s':>14} {'nDCG@10':>8} {'eval sts s':>11} {'STS-B':>6}  time vs {base}")
    for b, m in medians.items():
        ratio = result[f"median_time_ratio_vs_{base}"][b]
        print(f"{b:>14} {m['index_build_s']:14.1f} {m['scifact_ndcg_at_10']:8.2f} {m['eval_sts_s']:11.1f} "
              f"{m['stsb_test_spearman']:6.2f}  build {ratio['index_build_s']:.2f}x, "
              f"sts {ratio['eval_sts_s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
