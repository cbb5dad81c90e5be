"""RoFormer-Sim from the default all-MiniLM-L6-v2 on English pairs (issue 9's "Real experiments").

Train pairs: STS-B train pairs with score >= 4 plus the (sent0, sent1) pairs of the SNLI triplets. Two runs
from the untouched default model: ``plain`` (no distillation) and ``distill`` (teacher = the default model,
lambda = 100). For each: STS-B test (cosine Spearman x100, MTEB protocol) of the exported retrieval side, and
generation for the first ``--gen-texts`` STS-B test ``sentence1``: ``--candidates`` samples each (top-p 0.95),
ranked by the model's own cosine with the input dropped (what ``simtool generate`` prints), judged by the
untouched default model.

    nice -n 10 python benchmarks/roformer_sim_experiment.py --data ../shared/data --work /tmp/rfsim \\
        --steps 60 --candidates 20 [--only plain|distill] [--probe]

``--probe`` times a 2-step run and a small generation and exits (to size --steps on a machine).
Finished runs are reused (their figures are cached in the run directory). Writes roformer_sim_en.json and
roformer_sim_en.md into --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from simtool.encoder import load_encoder
from simtool.evals.sts import evaluate_sts
from simtool.roformer_sim import load_roformer_sim, rank_candidates, sample_continuations
from simtool.training import TrainConfig, train

BASE: dict[str, Any] = {
    "recipe": "roformer-sim",
    "batch_size": 48,  # pairs: the published 96 rows
    "dropout": 0.2,
    "scale": 20.0,
    "max_seq_length": 64,
    "seed": 42,
}
RUNS: dict[str, dict[str, Any]] = {
    "plain": {},
    "distill": {"teacher": "all-MiniLM-L6-v2", "distill_weight": 100.0},
}


def stsb_rows(root: Path, split: str) -> list[tuple[float, str, str]]:
    """(score, sentence1, sentence2) of stsb/original (QUOTE_NONE; fields 4, 5, 6 of rows with extra columns)."""
    out = []
    with open(root / f"stsb/original/sts-{split}.csv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            out.append((float(row[4]), row[5], row[6]))
    return out


def train_pairs(root: Path, work: Path) -> tuple[Path, dict[str, int]]:
    out = work / "pairs_en.csv"
    sts = [(a, b) for score, a, b in stsb_rows(root, "train") if score >= 4.0]
    with open(root / "nli/snli_devtest_triplets_simcse_format.csv", encoding="utf-8", newline="") as f:
        nli = [(r["sent0"], r["sent1"]) for r in csv.DictReader(f)]
    if not out.exists():
        work.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sent0", "sent1"])
            w.writerows(sts + nli)
        tmp.replace(out)
    return out, {"stsb_train_score_ge_4": len(sts), "snli_pairs": len(nli)}


def distinct_2(texts: list[str]) -> float:
    bigrams = [tuple(t.lower().split()[i : i + 2]) for t in texts for i in range(max(0, len(t.split()) - 1))]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def generation(model: Any, judge: Any, texts: list[str], candidates: int, chunk: int, seed: int) -> dict[str, Any]:
    """Sample, rank (input dropped), judge; tokens/s counts generated tokens incl. the closing [SEP]."""
    import numpy as np

    model.eval()
    tok = model.tokenizer
    sampled: list[list[str]] = []
    t0 = time.perf_counter()
    for i in range(0, len(texts), chunk):
        sampled += sample_continuations(
            model, texts[i : i + chunk], candidates=candidates, top_p=0.95, max_length=64, seed=seed + i
        )
    seconds = time.perf_counter() - t0
    tokens = sum(len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for cands in sampled for c in cands)
    ranked = rank_candidates(model, texts, sampled, n=5)
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731  (the dedupe rule of rank_candidates)
    tops = [r[0][0] if r else "" for r in ranked]
    judged = [i for i, t in enumerate(tops) if t]
    a = judge.encode([texts[i] for i in judged], normalize_embeddings=True)
    b = judge.encode([tops[i] for i in judged], normalize_embeddings=True)
    cos = (a * b).sum(1)
    all_cands = [c for cands in sampled for c in cands]
    return {
        "texts": len(texts),
        "candidates_per_text": candidates,
        # A text whose samples were all empty or copies has no top candidate: it counts as 0 cosine, not differing.
        "judge_cosine_top_mean": float(np.sum(cos) / len(texts)),
        "judge_cosine_top_mean_over_texts_with_a_candidate": float(np.mean(cos)) if len(cos) else 0.0,
        "top_differs_from_source": sum(1 for t, s in zip(tops, texts, strict=True) if t and norm(t) != norm(s))
        / len(texts),
        "raw_samples_copying_source": sum(
            norm(c) == norm(s) for cands, s in zip(sampled, texts, strict=True) for c in cands
        )
        / max(1, len(all_cands)),
        "distinct_2_all_candidates": distinct_2(all_cands),
        "generated_tokens": tokens,
        "generation_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
        "samples": [{"input": texts[i], "top": ranked[i][:3]} for i in range(min(10, len(texts)))],
    }


def run_one(name: str, args: argparse.Namespace, data: Path, judge: Any, test: Path) -> dict[str, Any]:
    out_dir = args.work / name
    cache = out_dir / "experiment.json"
    if cache.exists() and not args.probe:
        return json.loads(cache.read_text())
    settings = {**BASE, **RUNS[name], "lr": args.lr, "warmup_ratio": args.warmup_ratio, "max_steps": args.steps}
    config = TrainConfig(
        data=str(data),
        output=str(out_dir),
        eval_steps=10**6,
        save_steps=10**6,
        **settings,
    )
    t0 = time.perf_counter()
    result = train(config, progress=not args.no_progress)
    train_seconds = time.perf_counter() - t0
    log = [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    retrieval = load_encoder(out_dir / "retrieval", device="cpu")
    sts = evaluate_sts(retrieval, test).main_score
    model = load_roformer_sim(out_dir, device="cpu")
    gen = generation(model, judge, args.gen_source, args.candidates, args.chunk, seed=0)
    record = {
        "settings": settings,
        "steps": result.steps,
        "train_seconds": round(train_seconds, 1),
        "train_sentences_per_second": round(result.sentences_per_second, 2),
        "stsb_test": round(float(sts), 2),
        "log_first_last": [log[0], log[-1]] if log else [],
        "generation": gen,
    }
    if not args.probe:
        cache.write_text(json.dumps(record, indent=2))
    return record


def before(work: Path, judge: Any, test: Path) -> dict[str, Any]:
    """STS-B test before training: the default model as shipped (mean pooling), and the retrieval side of the
    untrained RoFormer-Sim stack built from it ([CLS] through the checkpoint's pooler dense, no tanh)."""
    from simtool.roformer_sim import build_roformer_sim, export_retrieval

    cache = work / "baseline.json"
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    stack = build_roformer_sim(None, device="cpu")
    side = load_encoder(export_retrieval(stack, work / "untrained-retrieval"), device="cpu")
    baseline = {
        "stsb_test_default_model": round(float(evaluate_sts(judge, test).main_score), 2),
        "stsb_test_untrained_stack_retrieval_side": round(float(evaluate_sts(side, test).main_score), 2),
    }
    cache.write_text(json.dumps(baseline))
    return baseline


def markdown(report: dict[str, Any]) -> str:
    runs, base = report["runs"], report["baseline"]
    first = next(iter(runs.values()))
    gen0 = first["generation"]
    lines = [
        "# RoFormer-Sim from all-MiniLM-L6-v2 on English pairs",
        "",
        f"Train pairs: {report['train_pairs']}; settings: {first['settings']} (distill adds teacher and lambda).",
        f"Generation: first {gen0['texts']} STS-B test sentence1, {gen0['candidates_per_text']} candidates each "
        "(top-p 0.95, max length 64), input dropped, ranked by the model's own cosine; judged by the untouched "
        "all-MiniLM-L6-v2. CPU fp32, 1 thread per run, nice 10, 2 cores shared with other jobs.",
        "",
        f"Before: default model {base['stsb_test_default_model']}; the untrained stack's retrieval side "
        f"([CLS] + linear pooler) {base['stsb_test_untrained_stack_retrieval_side']}.",
        "",
        "| run | steps | train s | STS-B test | judge cos (top) | top differs | distinct-2 | samples copying "
        "source | gen tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        g = r["generation"]
        lines.append(
            f"| {name} | {r['steps']} | {r['train_seconds']:.0f} | {r['stsb_test']:.2f} | "
            f"{g['judge_cosine_top_mean']:.3f} | {g['top_differs_from_source']:.0%} | "
            f"{g['distinct_2_all_candidates']:.3f} | {g['raw_samples_copying_source']:.0%} | {g['tokens_per_second']} |"
        )
    for name, r in runs.items():
        lines += ["", f"## Samples ({name})", ""]
        for sample in r["generation"]["samples"]:
            top = sample["top"][0] if sample["top"] else ["(none)", 0.0]
            lines.append(f"- {sample['input']} -> {top[0]} ({top[1]:.3f})")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/rfsim-en"))
    parser.add_argument("--out", type=Path, default=Path("evals/results"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--warmup-ratio", type=float, default=0.0)
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--gen-texts", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=10, help="texts per sampling batch (rows = chunk * candidates)")
    parser.add_argument("--only", choices=["baseline", *RUNS])
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    test = args.data / "stsb/original/sts-test.csv"
    data, counts = train_pairs(args.data, args.work)
    args.gen_source = [a for _, a, _ in stsb_rows(args.data, "test")][: args.gen_texts]
    judge = load_encoder(None, device="cpu")
    if args.probe:
        args.steps, args.gen_texts, args.work = 2, 2, args.work / "probe"
        args.gen_source = args.gen_source[:2]
        for name in RUNS if args.only in (None, "baseline") else [args.only]:
            r = run_one(name, args, data, judge, test)
            print(name, json.dumps({k: r[k] for k in ("steps", "train_seconds")}), r["generation"]["tokens_per_second"])
        return
    if args.only in (None, "baseline"):
        baseline = before(args.work, judge, test)
    if args.only == "baseline":
        return
    runs = {name: run_one(name, args, data, judge, test) for name in (RUNS if args.only is None else [args.only])}
    if args.only is not None:
        return
    report = {"model": "all-MiniLM-L6-v2", "train_pairs": counts, "baseline": baseline, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roformer_sim_en.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (args.out / "roformer_sim_en.md").write_text(markdown(report), encoding="utf-8")
    print(
        json.dumps(
            {
                n: {
                    "stsb_test": r["stsb_test"],
                    **{
                        k: r["generation"][k]
                        for k in (
                            "judge_cosine_top_mean",
                            "top_differs_from_source",
                            "distinct_2_all_candidates",
                            "tokens_per_second",
                        )
                    },
                }
                for n, r in runs.items()
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
