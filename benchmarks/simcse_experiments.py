"""SimCSE experiments with all-MiniLM-L6-v2 (issue 5's report tables).

zh:  language adaptation with unsupervised SimCSE on the distinct sentences of Chinese STS-B train
     (both sides, labels unused); best checkpoint on STS-B valid; scored on STS-B valid and test,
     and with ``--all-tasks`` on ATEC/BQ/LCQMC/PAWSX test.
sup: supervised SimCSE on the SNLI triplets (margin 0 / 0.1 / 0.2; exact batch 256 in mini-batches of
     32 vs naive accumulation of 8 × 32); best checkpoint on STS-B dev; scored on STS-B dev and test.

Scores are cosine Spearman ×100 (MTEB protocol). Finished runs are reused (their scores are cached in
the run directory), so a grid can be grown one run at a time:

    python benchmarks/simcse_experiments.py zh --work /tmp/simcse-zh                # the whole grid
    python benchmarks/simcse_experiments.py zh --work /tmp/simcse-zh --only plain --all-tasks
    python benchmarks/simcse_experiments.py sup --work /tmp/simcse-sup

Writes simcse_EXPERIMENT.md and simcse_EXPERIMENT.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from simtool.encoder import load_encoder
from simtool.evals.sts import evaluate_sts
from simtool.training import TrainConfig, train

Task = tuple[str, str, str]  # (label, dataset path relative to the data root, split)


@dataclass
class Experiment:
    title: str
    base: dict[str, Any]
    grid: dict[str, dict[str, Any]]
    data: Callable[[Path, Path], Path]  # (data root, work dir) -> training file
    select: Task  # the dev set that picks the best checkpoint
    scored: list[Task]
    extra: list[Task] = field(default_factory=list)  # with --all-tasks
    notes: str = ""


def zh_sentences(root: Path, work: Path) -> Path:
    """Distinct sentences of STS-B.train.data, both columns, first-seen order; labels dropped."""
    out = work / "stsb_zh_train_sentences.txt"
    if not out.exists():
        seen: dict[str, None] = {}
        for line in (root / "chinese_sts/STS-B/STS-B.train.data").read_text(encoding="utf-8").splitlines():
            a, b, _ = line.split("\t")
            seen.update(dict.fromkeys(s.strip() for s in (a, b)))
        work.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(s for s in seen if s) + "\n", encoding="utf-8")
    return out


BOJONE = {"symmetric": True, "same_view_negatives": True}  # the article's loss: both directions, 2N-1 candidates
EXPERIMENTS = {
    "zh": Experiment(
        title="Unsupervised SimCSE on Chinese STS-B train sentences (all-MiniLM-L6-v2)",
        base={
            "recipe": "simcse-unsup",
            "pooling": "mean",
            "batch_size": 64,
            "lr": 3e-5,
            "dropout": 0.1,
            "scale": 20.0,
            "max_seq_length": 64,
            "eval_steps": 50,
            "seed": 42,
        },
        grid={
            "plain": {},
            "dropout0.3": {"dropout": 0.3},
            "dropout0.3-bojone": {"dropout": 0.3, **BOJONE},
            "lr1e-4": {"lr": 1e-4},
            "lr5e-5-bojone": {"lr": 5e-5, **BOJONE},
            "lr5e-5-bojone-cls": {"lr": 5e-5, "pooling": "cls", **BOJONE},
            "lr5e-5-bojone-margin0.1": {"lr": 5e-5, "margin": 0.1, **BOJONE},
            "lr5e-5-bojone-margin0.2": {"lr": 5e-5, "margin": 0.2, **BOJONE},
            "lr5e-5-bojone-2ep": {"lr": 5e-5, "epochs": 2, **BOJONE},
            "plain-2ep-len32": {"epochs": 2, "max_seq_length": 32},
            "plain-3ep-len32": {"epochs": 3, "max_seq_length": 32},
            "lr5e-5-2ep-len32": {"lr": 5e-5, "epochs": 2, "max_seq_length": 32},
            "margin0.1-2ep-len32": {"margin": 0.1, "epochs": 2, "max_seq_length": 32},
            "margin0.2-2ep-len32": {"margin": 0.2, "epochs": 2, "max_seq_length": 32},
            "margin0.3-2ep-len32": {"margin": 0.3, "epochs": 2, "max_seq_length": 32},
            "margin0.4-2ep-len32": {"margin": 0.4, "epochs": 2, "max_seq_length": 32},
        },
        data=zh_sentences,
        select=("STS-B valid", "chinese_sts/STS-B", "valid"),
        scored=[("STS-B valid", "chinese_sts/STS-B", "valid"), ("STS-B test", "chinese_sts/STS-B", "test")],
        extra=[(f"{t} test", f"chinese_sts/{t}", "test") for t in ("ATEC", "BQ", "LCQMC", "PAWSX")],
        notes=(
            "9424 distinct sentences, 1 epoch = 147 steps at batch 64; CPU fp32. The reported runs read them in a\n"
            "shuffled order; the file this script writes is in first-seen order (the same set), so reruns move\n"
            "by noise. Every score reads up to 256 tokens."
        ),
    ),
    "sup": Experiment(
        title="Supervised SimCSE on SNLI triplets (all-MiniLM-L6-v2)",
        base={
            "recipe": "simcse-sup",
            "batch_size": 64,
            "lr": 5e-5,
            "margin": 0.0,
            "scale": 20.0,
            "max_seq_length": 32,
            "eval_steps": 23,
            "seed": 42,
        },
        grid={
            "margin0": {},
            "margin0.1": {"margin": 0.1},
            "margin0.2": {"margin": 0.2},
            "exact-256/32": {"batch_size": 256, "mini_batch_size": 32, "eval_steps": 6},
            "naive-8x32": {"batch_size": 256, "mini_batch_size": 32, "accumulation": "naive", "eval_steps": 6},
        },
        data=lambda root, work: root / "nli/snli_devtest_triplets_simcse_format.csv",
        select=("STS-B dev", "stsb/original", "dev"),
        scored=[("STS-B dev", "stsb/original", "dev"), ("STS-B test", "stsb/original", "test")],
        notes="5883 (anchor, entailment, contradiction) triplets; 1 epoch = 92 steps at batch 64, 23 at 256; CPU fp32.",
    ),
}


def score(model_dir: Path | None, root: Path, tasks: list[Task]) -> dict[str, float]:
    """Cosine Spearman ×100 per task label, reading up to the base model's 256 tokens (runs made before
    simtool restored the model's own limit on save carry their training --max-seq-length)."""
    model = load_encoder(model_dir, device="cpu", max_seq_length=256)
    return {label: round(evaluate_sts(model, root / path, split=split).main_score, 2) for label, path, split in tasks}


def run(exp: Experiment, name: str, root: Path, work: Path, all_tasks: bool) -> dict[str, Any]:
    """Train run ``name`` unless ``work/name`` already holds it, then score what is not cached yet."""
    output = work / name.replace("/", "-")
    settings = {**exp.base, **exp.grid[name]}
    if not (output / "training_summary.json").exists():
        _, path, split = exp.select
        config = TrainConfig(data=str(exp.data(root, work)), output=str(output), **settings)
        train(config, evaluate=lambda model: evaluate_sts(model, root / path, split=split).main_score)
    summary = json.loads((output / "training_summary.json").read_text())
    scores_file = output / "scores.json"
    scores = json.loads(scores_file.read_text()) if scores_file.exists() else {}
    missing = [t for t in exp.scored + (exp.extra if all_tasks else []) if t[0] not in scores]
    if missing:
        scores.update(score(output, root, missing))
        scores_file.write_text(json.dumps(scores, indent=2) + "\n")
    return {"settings": settings, "best_step": summary["best_step"], "steps": summary["steps"], "scores": scores}


def report(exp: Experiment, results: dict[str, Any]) -> str:
    columns = [t[0] for t in exp.scored + exp.extra]
    base = results["baseline"]
    rows = [
        f"| run | changes | {' | '.join(columns)} |",
        "|---|---|" + "---|" * len(columns),
        f"| all-MiniLM-L6-v2 | (no training) | {' | '.join(f'{base[c]:.2f}' for c in columns)} |",
    ]
    for name, r in results["runs"].items():
        changed = {k: v for k, v in r["settings"].items() if exp.base.get(k) != v and k != "eval_steps"}
        changes = ", ".join(f"{k}={v}" for k, v in changed.items()) or "-"
        cells = [f"{r['scores'][c]:.2f}" if c in r["scores"] else "" for c in columns]
        rows.append(f"| {name} (best step {r['best_step']}/{r['steps']}) | {changes} | {' | '.join(cells)} |")
    settings = ", ".join(f"{k}={v}" for k, v in exp.base.items())
    return (
        f"# {exp.title}\n\n{exp.notes}\nEvery run: {settings}, 1 epoch unless stated.\n"
        f"Best checkpoint on {exp.select[0]} (as SimCSE does); cosine Spearman x100 (MTEB protocol).\n\n"
        + "\n".join(rows)
        + "\n"
    )


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=list(EXPERIMENTS))
    ap.add_argument("--data-root", type=Path, default=here.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, required=True, help="training outputs, one directory per run")
    ap.add_argument("--out", type=Path, default=here / "evals" / "results")
    ap.add_argument("--only", nargs="*", help="runs to train/score (default: the whole grid)")
    ap.add_argument("--all-tasks", action="store_true", help="also score the extra tasks (zh: the other four)")
    args = ap.parse_args()
    exp = EXPERIMENTS[args.experiment]
    if unknown := set(args.only or ()) - set(exp.grid):
        raise SystemExit(f"--only: unknown runs {sorted(unknown)}; choose from {list(exp.grid)}")
    if not (args.data_root / exp.select[1]).is_dir():
        raise SystemExit(f"{args.data_root / exp.select[1]}: not found (pass --data-root)")

    results_file = args.out / f"simcse_{args.experiment}.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"runs": {}}
    baseline_file = args.work / "baseline.json"
    if not baseline_file.exists():
        args.work.mkdir(parents=True, exist_ok=True)
        baseline_file.write_text(json.dumps(score(None, args.data_root, exp.scored + exp.extra), indent=2) + "\n")
    results["baseline"] = json.loads(baseline_file.read_text())
    for name in args.only or exp.grid:
        results["runs"][name] = run(exp, name, args.data_root, args.work, args.all_tasks)
    text = report(exp, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"simcse_{args.experiment}.md").write_text(text)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
