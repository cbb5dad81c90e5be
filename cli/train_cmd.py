"""``simtool train``: SimCSE (unsupervised / supervised) with AM-Softmax margin and exact large batches."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from simtool.cli.common import flag_text
from simtool.errors import SimtoolError


def train(
    recipe: Annotated[str, typer.Option("--recipe", help="simcse-unsup, simcse-sup or roformer-sim.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="unsup: .txt, one sentence per line (or a 'text' column); sup: CSV/TSV/JSONL with "
            "sent0,sent1[,hard_neg]. Optionally .gz; streamed.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory: final model + checkpoints/.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model to start from (default: all-MiniLM-L6-v2).")
    ] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls or mean (default: the model's).")] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="B: rows per optimizer step, all processes together (the negatives).")
    ] = 64,
    mini_batch_size: Annotated[
        int | None,
        typer.Option(
            "--mini-batch-size", help="b: rows per forward pass; b < B caches gradients exactly (default: B)."
        ),
    ] = None,
    scale: Annotated[float, typer.Option("--scale", help="Logit scale s = 1/temperature.")] = 20.0,
    margin: Annotated[
        float, typer.Option("--margin", help="AM-Softmax margin m subtracted from the positive cosine.")
    ] = 0.0,
    hard_negative_weight: Annotated[
        float, typer.Option("--hard-negative-weight", help="simcse-sup: weight α of a row's own hard negative.")
    ] = 1.0,
    symmetric: Annotated[
        bool, typer.Option("--symmetric", help="Also score each positive against all anchors (averaged).")
    ] = False,
    same_view_negatives: Annotated[
        bool, typer.Option("--same-view-negatives", help="Other anchors join the denominator (bojone's variant).")
    ] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the data (ignored with --max-steps).")] = 1,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps to train.")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear decay).")] = 3e-5,
    warmup_ratio: Annotated[float, typer.Option("--warmup-ratio", help="Fraction of steps of linear warmup.")] = 0.0,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option("--max-grad-norm", help="Gradient clipping; 0 = off.")] = 1.0,
    max_seq_length: Annotated[int, typer.Option("--max-seq-length", help="Tokens per sentence.")] = 32,
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout of every layer during training.")] = 0.1,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16/fp16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    eval_sts: Annotated[
        Path | None,
        typer.Option("--eval-sts", help="STS dev set scored every --eval-steps; the best checkpoint is kept."),
    ] = None,
    eval_split: Annotated[
        str | None,
        typer.Option("--eval-split", help="Split of --eval-sts (default: dev for a directory, else the file's own)."),
    ] = None,
    eval_steps: Annotated[int, typer.Option("--eval-steps")] = 125,
    save_steps: Annotated[int, typer.Option("--save-steps", help="Checkpoint every N steps.")] = 500,
    save_total_limit: Annotated[int, typer.Option("--save-total-limit", help="Step checkpoints kept.")] = 2,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    shuffle_buffer: Annotated[
        int, typer.Option("--shuffle-buffer", help="Rows held for shuffling; 0 = file order.")
    ] = 100_000,
    global_shuffle: Annotated[
        str | None,
        typer.Option(
            "--global-shuffle",
            metavar="MEMORY",
            help="Shuffle the whole file each epoch in this much memory (e.g. 1GiB), not through --shuffle-buffer.",
        ),
    ] = None,
    accumulation: Annotated[
        str,
        typer.Option(
            "--accumulation",
            help="exact (default) or naive: naive trains each mini-batch as its own batch, for comparison only.",
        ),
    ] = "exact",
    noise: Annotated[
        bool, typer.Option("--noise", help="roformer-sim: BART-style whole-word noise on half of the sources.")
    ] = False,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Distil this model's cosine matrix into the student.")
    ] = None,
    distill_weight: Annotated[float, typer.Option("--distill-weight", help="λ of the distillation MSE.")] = 0.0,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --output.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON summary (quiet, for scripts).")] = False,
) -> None:
    """Train a sentence encoder with SimCSE; exact in-batch negatives at any batch size.

    Multi-GPU / multi-node: torchrun --nproc-per-node N -m simtool train ... (B is split over processes).
    """
    from simtool.training import TrainConfig, TrainingInterrupted
    from simtool.training import train as run_training

    config = TrainConfig(
        recipe=recipe,
        data=str(data),
        output=str(output),
        model=model,
        pooling=pooling,
        batch_size=batch_size,
        mini_batch_size=mini_batch_size,
        scale=scale,
        margin=margin,
        hard_negative_weight=hard_negative_weight,
        symmetric=symmetric,
        same_view_negatives=same_view_negatives,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        weight_decay=weight_decay,
        warmup_ratio=warmup_ratio,
        max_grad_norm=max_grad_norm,
        max_seq_length=max_seq_length,
        dropout=dropout,
        precision=precision,
        seed=seed,
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        eval_steps=eval_steps,
        shuffle_buffer=shuffle_buffer,
        global_shuffle=global_shuffle,
        accumulation=accumulation,
        noise=noise,
        teacher=teacher,
        distill_weight=distill_weight,
        device=device,
        resume=resume,
    )
    config.validate()
    evaluate = None if eval_sts is None else sts_evaluator(eval_sts, eval_split)
    try:
        result = run_training(config, evaluate=evaluate, progress=not json_out)
    except TrainingInterrupted as e:
        print(f"simtool: {flag_text(str(e))}", file=sys.stderr)
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports for all processes
    summary = result.to_json()
    if json_out:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
        return
    line = (
        f"trained {result.steps} steps in {result.seconds:.1f}s ({result.sentences_per_second:.0f} sentences/s), "
        f"final loss {result.final_loss:.4f}; model in {result.output}"
    )
    if result.best_score is not None:
        line += f"; best eval score {result.best_score:.2f} at step {result.best_step}"
        if result.baseline_score is not None:
            line += f" (before training {result.baseline_score:.2f})"
    typer.echo(line)


def sts_evaluator(path: Path, split: str | None) -> Any:
    """``model -> cosine Spearman ×100`` on an STS file or directory (the baseline score, before the first
    step, reads it, so a bad file stops the run before any training)."""
    if not path.exists():
        raise SimtoolError(f"--eval-sts {path}: no such file or directory")
    from simtool.evals.sts import evaluate_sts

    if split is None and path.is_dir():
        split = "dev"  # model selection on the test split would be leakage

    def evaluate(model: Any) -> float:
        return float(evaluate_sts(model, path, split=split).main_score)

    return evaluate
