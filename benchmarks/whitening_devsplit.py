"""Tune the whitening power on (a) STS-B dev and (b) a dev split carved out of STS-B train to look like
STS-B test (``simtool split --like``); report STS-B test for both (issue 14, default model).

Whitening is fitted on all STS-B train sentences (no labels) for both; only the tuning set
differs. The dev split has as many pairs as STS-B dev (1,500) and is taken out of train;
its rows' scores are used only for tuning. Also prints the test score at every grid power
(an oracle, for context) and the raw model's score.

    python benchmarks/whitening_devsplit.py [--data ../shared/data] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from simtool.devsplit import like_split
from simtool.encoder import encode_pairs, load_encoder
from simtool.evals.metrics import spearman
from simtool.evals.readers import load_sts
from simtool.reduce.whitening import POWER_GRID, RANK_RTOL, Whitening

ROOT = Path(__file__).resolve().parents[1]


def test_score(w: Whitening | None, t1: np.ndarray, t2: np.ndarray, gold: np.ndarray) -> float:
    a, b = (t1, t2) if w is None else (w.transform(t1), w.transform(t2))
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 100 * spearman((a * b).sum(axis=1), gold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("SIMTOOL_SHARED_DATA") or ROOT.parent / "shared/data")
    )
    ap.add_argument("--dev-size", type=int, default=1500)
    ap.add_argument("--cache", type=Path, default=None, help="Directory to keep the embeddings in between runs.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    stsb = args.data / "stsb" / "original"
    model = load_encoder(None)
    train, dev, test = (load_sts(stsb, "auto", s) for s in ("train", "dev", "test"))

    def encoded(name: str, data: Any) -> tuple[np.ndarray, np.ndarray]:
        cache = None if args.cache is None else args.cache / f"stsb-{name}.npz"
        if cache is not None and cache.exists():
            z = np.load(cache)
            return z["a"], z["b"]
        a, b = encode_pairs(model, data.sentences1, data.sentences2)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, a=a, b=b)
        return a, b

    tr1, tr2 = encoded("train", train)
    d1, d2 = encoded("dev", dev)
    t1, t2 = encoded("test", test)
    split = like_split((tr1 + tr2) / 2, (t1 + t2) / 2, args.dev_size)
    official_vs_test = like_split(
        np.vstack([(tr1 + tr2) / 2, (d1 + d2) / 2]), (t1 + t2) / 2, args.dev_size
    )  # for context: how test-like the official dev is, scored the same way
    official_dev_rows = np.arange(len(tr1), len(tr1) + len(d1))
    official_dev_p = float(official_vs_test.test_probability[official_dev_rows].mean())
    fit_on = np.vstack([tr1, tr2])
    # MiniLM has constant dimensions: whiten in the data's rank (full-rank whitening would divide by 0)
    eig = Whitening(None, 0.0).fit(fit_on).eigenvalues_
    k = int((eig > RANK_RTOL * eig[0]).sum())
    tunes = {
        "stsb_dev": (d1, d2, dev.scores),
        "dev_split_like_test": (tr1[split.dev], tr2[split.dev], train.scores[split.dev]),
    }
    result: dict[str, object] = {
        "model": "all-MiniLM-L6-v2",
        "whitening_dim": k,
        "raw_test": round(test_score(None, t1, t2, test.scores), 2),
        "split_auc": round(split.auc, 4),
        "split_auc_kind": split.to_json()["auc_kind"],
        "mean_p_test": {
            "dev_split": round(float(split.test_probability[split.dev].mean()), 3),
            "official_dev": round(official_dev_p, 3),
        },
    }
    grid = {}
    for p in POWER_GRID:
        grid[p] = round(test_score(Whitening(k, p).fit(fit_on), t1, t2, test.scores), 2)
    result["test_by_power"] = grid
    for name, tune in tunes.items():
        w = Whitening(k, "auto").fit(fit_on, tune=tune)
        result[name] = {
            "power": w.power_,
            "dev_score": round(max(g["cosine_spearman"] for g in w.grid_), 2),
            "test": round(test_score(w, t1, t2, test.scores), 2),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
