"""STS-B test scored by simtool (``simtool eval sts``'s library path) vs sentence-transformers'
``EmbeddingSimilarityEvaluator``, same model, same pairs: wall time and score (goal: ≤ 1.0x, identical score).

Runs alternate order each repeat; the ratio is the median of per-repeat ratios.

    python benchmarks/bench_eval.py [--data-root ../shared/data] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from simtool.encoder import load_encoder
    from simtool.evals.readers import load_sts
    from simtool.evals.sts import evaluate_sts

    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=here.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = args.data_root / "stsb" / "original"
    model = load_encoder(device="cpu")
    data = load_sts(path, "stsb", "test")
    evaluator = EmbeddingSimilarityEvaluator(
        data.sentences1, data.sentences2, [float(s) for s in data.scores], name="stsb-test", show_progress_bar=False
    )

    def run_simtool() -> float:
        return evaluate_sts(model, path, format="stsb", split="test").main_score

    def run_st() -> float:
        return 100 * evaluator(model)["stsb-test_spearman_cosine"]

    times: dict[str, list[float]] = {"simtool": [], "st": []}
    scores: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = [("simtool", run_simtool), ("st", run_st)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["simtool"], times["st"], strict=True)]
    result = {
        "simtool_seconds_median": round(statistics.median(times["simtool"]), 2),
        "st_seconds_median": round(statistics.median(times["st"]), 2),
        "ratio_simtool_over_st": round(statistics.median(ratios), 3),
        "simtool_score": scores["simtool"],
        "st_score": scores["st"],
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26s} {value}")
        print(
            f"goal: ratio <= 1.0 -> {'met' if result['ratio_simtool_over_st'] <= 1 else 'NOT met'}; "
            # float32 similarities summed in another order differ in the 6th decimal
            f"scores {'equal to 4 decimals' if abs(scores['simtool'] - scores['st']) < 1e-4 else 'DIFFER'}"
        )


if __name__ == "__main__":
    main()
