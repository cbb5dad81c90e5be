"""Every encode backend against ``SentenceTransformer.encode`` fp32, side by side on STS-B test sentences.

One run loads the model once (torch fp32), attaches each backend of :mod:`simtool.backends` to its own
copy (``openvino-int8`` through a ``simtool export`` into a temporary directory, built-in calibration,
accuracy guard on), then times interleaved rounds: every round runs every method once, in an order
rotated each round, on the same texts held in memory. Reported per method:

* texts/s (median over rounds) and the ratio against ``SentenceTransformer.encode`` fp32 (``st_fp32``):
  the median of the per-round ratios (each round's runs are back to back, which cancels most load drift),
  with each round's ratio;
* accuracy: STS-B test cosine Spearman ×100 on the pairs encoded, and max ``1 - cos`` against st_fp32.

``--passages N`` times the first N SciFact abstracts instead (issue 16's passage row; accuracy is then max
``1 - cos`` only). Texts: the first ``--pairs`` pairs of STS-B test (``<shared data>/stsb``; 1,379 = all, published
all-MiniLM-L6-v2 figure 82.03), both sentences of each pair. Batch ``--batch-size`` (64). torch threads:
torch's default (the cores available); ``OMP_WAIT_POLICY`` as simtool sets it.

Run (from the repo root)::

    HF_HUB_OFFLINE=1 SIMTOOL_SHARED_DATA=/work/shared/data .venv/bin/python benchmarks/bench_backends.py
    ... --pairs 1379 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import rotated

from simtool.backends import BACKENDS, backend_info
from simtool.encoder import load_encoder
from simtool.protocols import encoder_info


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shared_data_dir() -> Path:
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def one_minus_cos(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float((1 - cos).max())


def main(argv: list[str] | None = None) -> None:
    from sentence_transformers import SentenceTransformer

    from simtool.backends.export import export_model
    from simtool.evals.metrics import sts_scores
    from simtool.evals.readers import load_sts

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=500, help="STS-B test pairs (default 500; 1379 = all)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default=None, help="model (default all-MiniLM-L6-v2)")
    p.add_argument("--backends", default=",".join(["auto", *BACKENDS]), help="comma-separated backends")
    p.add_argument(
        "--passages",
        type=int,
        default=0,
        help="instead: the first N SciFact abstracts (title + text, truncated at the model's 256 tokens); no STS score",
    )
    p.add_argument("--data-dir", type=Path, default=shared_data_dir())
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.rounds < 1 or args.batch_size < 1:
        p.error("--pairs, --rounds and --batch-size must be positive")

    if args.passages:
        with open(args.data_dir / "beir" / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(args.passages), f, strict=False)]
        texts = [f"{r.get('title') or ''} {r['text']}".strip() for r in rows]
        s1: list[str] = []
        described_texts = f"SciFact corpus, first {len(texts)} abstracts (title + text)"
    else:
        data = load_sts(args.data_dir / "stsb" / "original", split="test")
        s1, s2 = data.sentences1[: args.pairs], data.sentences2[: args.pairs]
        gold = data.scores[: args.pairs]
        texts = s1 + s2
        described_texts = f"STS-B test, first {len(s1)} pairs ({len(texts)} sentences)"
    n = len(texts)
    base = load_encoder(args.model, device="cpu", backend="torch")
    outputs: dict[str, np.ndarray] = {}
    methods: dict[str, Callable[[list[str]], None]] = {}
    described: dict[str, Any] = {}

    def st_fp32(texts: list[str]) -> None:
        outputs["st_fp32"] = SentenceTransformer.encode(base, texts, batch_size=args.batch_size, convert_to_numpy=True)

    methods["st_fp32"] = st_fp32
    with tempfile.TemporaryDirectory(prefix="simtool-bench-backends-") as tmp:
        for name in args.backends.split(","):
            if name == "openvino-int8":
                started = time.perf_counter()
                record = export_model(base, "openvino-int8", Path(tmp) / "int8", source=str(encoder_info(base).source))
                log(f"int8 export + guard: {time.perf_counter() - started:.0f}s, guard {record['guard']}")
                model = load_encoder(Path(tmp) / "int8", device="cpu", backend="openvino-int8")
            else:
                model = load_encoder(args.model, device="cpu", backend=name)
            described[name] = backend_info(model)

            def run(texts: list[str], model: Any = model, name: str = name) -> None:
                outputs[name] = model.encode(texts, batch_size=args.batch_size)

            methods[name] = run
        for fn in methods.values():  # warm-up: first calls compile and allocate
            fn(texts[: 2 * args.batch_size])
        runs: dict[str, list[float]] = {m: [] for m in methods}
        names = list(methods)
        for r in range(args.rounds):
            order = rotated(names, r)
            for name in order:
                started = time.perf_counter()
                methods[name](texts)
                runs[name].append(n / (time.perf_counter() - started))
                log(f"  round {r + 1}/{args.rounds} {name}: {runs[name][-1]:.0f} texts/s")
    ref = outputs["st_fp32"]
    results: dict[str, dict[str, Any]] = {}
    for name in methods:
        per_round = [a / b for a, b in zip(runs[name], runs["st_fp32"], strict=True)]
        vec = outputs[name]
        spearman = sts_scores(vec[: len(s1)], vec[len(s1) :], gold)["cosine_spearman"] if s1 else None
        results[name] = {
            "backend": described.get(name, {"name": "sentence-transformers fp32"})["name"],
            "texts_per_second": round(statistics.median(runs[name]), 1),
            "runs_texts_per_second": [round(x, 1) for x in runs[name]],
            "ratio_vs_st_fp32": round(statistics.median(per_round), 3),
            "ratios_per_round": [round(x, 3) for x in per_round],
            "sts_spearman": None if spearman is None else round(spearman, 3),
            "max_one_minus_cos_vs_st_fp32": one_minus_cos(vec, ref),
        }
    base_spearman = results["st_fp32"]["sts_spearman"]
    for res in results.values():
        res["sts_delta"] = None if base_spearman is None else round(res["sts_spearman"] - base_spearman, 3)
    report: dict[str, Any] = {
        "benchmark": "backends",
        "texts": described_texts,
        "model": encoder_info(base).source,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "results": results,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['texts']}; model {report['model']}, batch {args.batch_size}, {report['torch_threads']} threads")
    print(f"{'method':<16} {'texts/s':>8} {'x st fp32':>9}  {'per round':<22} {'STS':>7} {'Δ':>7} {'max 1-cos':>9}")
    for name, res in results.items():
        rounds = ", ".join(f"{x:.2f}" for x in res["ratios_per_round"])
        print(
            f"{name:<16} {res['texts_per_second']:>8.0f} {res['ratio_vs_st_fp32']:>9.2f}  {rounds:<22} "
            + (f"{res['sts_spearman']:>7.2f} {res['sts_delta']:>+7.2f} " if s1 else f"{'-':>7} {'-':>7} ")
            + f"{res['max_one_minus_cos_vs_st_fp32']:>9.1e}"
        )


if __name__ == "__main__":
    main()
