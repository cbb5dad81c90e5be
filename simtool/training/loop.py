"""Training loop for ``simtool train``: SimCSE recipes, streamed data, exact large batches, checkpoints, resume.

Data (streamed; a first pass validates the whole file and counts rows, nothing is held in memory beyond
the shuffle buffer):

- ``simcse-unsup``: ``.txt`` with one sentence per line (blank lines skipped), or CSV/TSV/JSONL with a
  ``text`` column; each sentence is encoded twice, dropout is the augmentation.
- ``simcse-sup``: CSV/TSV/JSONL with ``sent0,sent1[,hard_neg]`` (anchor, positive, hard negative).

Every file may be gzipped. Rows are shuffled through a seeded buffer and grouped into batches of exactly
``batch_size`` rows in which no sentence occurs twice (a repeated sentence would be its own false
negative): a row that would repeat one waits for a later batch.

Batches: ``batch_size`` B is the global batch (the negative set). Under ``torchrun`` each of the W processes
takes B/W rows and the embeddings are all-gathered, so the gradients equal a single process's batch-B
gradients. ``mini_batch_size`` b < B turns on exact gradient caching (:mod:`simtool.grad_cache`).

Output directory layout::

    OUTPUT/                     the final model in sentence-transformers format (the best one with eval)
    OUTPUT/checkpoints/step-N/  a model + trainer_state.pt (optimizer, scheduler, RNG, data position)
    OUTPUT/checkpoints/best/    with evaluation: the best model so far and best.json
    OUTPUT/train_log.jsonl      one line per optimizer step: step, epoch, loss, lr, seconds
    OUTPUT/training_summary.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from simtool.atomic import atomic_dir, atomic_open, atomic_write_json, fsync_dir, fsync_tree, replace_dir
from simtool.errors import SimtoolError
from simtool.training.data import epoch_batches, scan_training_file
from simtool.training.recipes import RECIPES, get_recipe
from simtool.validate import check_pooling, check_positive

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ACCUMULATION = ("exact", "naive")
STATE_FILE = "trainer_state.pt"

log = logging.getLogger(__name__)

# Options that may differ between a run and its --resume without changing the computation's meaning.
RESUME_MAY_CHANGE = frozenset(
    {"output", "resume", "save_steps", "save_total_limit", "device", "mini_batch_size", "eval_steps"}
)


class TrainingInterrupted(SimtoolError):
    """Training stopped on request (Ctrl-C); a checkpoint of the last completed step was written."""


class NonFiniteLossError(SimtoolError):
    """The loss became NaN or infinite; nothing was written for that step."""


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI options of ``simtool train``)."""

    recipe: str
    data: str
    output: str
    model: str | None = None
    pooling: str | None = None
    batch_size: int = 64
    mini_batch_size: int | None = None
    scale: float = 20.0
    margin: float = 0.0
    hard_negative_weight: float = 1.0
    symmetric: bool = False
    same_view_negatives: bool = False
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_length: int = 32
    dropout: float | None = 0.1
    precision: str = "auto"
    seed: int = 42
    save_steps: int = 500
    save_total_limit: int = 2
    eval_steps: int = 125
    shuffle_buffer: int = 100_000
    global_shuffle: str | None = None  # memory budget of a two-pass global shuffle per epoch, e.g. "1GiB"
    accumulation: str = "exact"
    noise: bool = False  # roformer-sim: BART-style noise on half of the rows' sources
    teacher: str | None = None
    distill_weight: float = 0.0
    device: str | None = None
    resume: bool = False

    def validate(self) -> None:
        """Reject impossible settings with a one-line :class:`SimtoolError` naming the option."""
        if self.recipe not in RECIPES:
            raise SimtoolError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.precision not in PRECISIONS:
            raise SimtoolError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.accumulation not in ACCUMULATION:
            raise SimtoolError(f"unknown accumulation {self.accumulation!r}; choose exact or naive")
        positive = {
            "epochs": self.epochs,
            "lr": self.lr,
            "scale": self.scale,
            "max_seq_length": self.max_seq_length,
            "save_steps": self.save_steps,
            "save_total_limit": self.save_total_limit,
            "eval_steps": self.eval_steps,
        }
        if self.max_steps is not None:
            positive["max_steps"] = self.max_steps
        for name, value in positive.items():
            check_positive(name, value)
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise SimtoolError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise SimtoolError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name, value in (
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("hard_negative_weight", self.hard_negative_weight),
            ("distill_weight", self.distill_weight),
            ("shuffle_buffer", self.shuffle_buffer),
        ):
            if value < 0:
                raise SimtoolError(f"{name} must be >= 0, got {value}")
        if self.global_shuffle is not None:
            from simtool.shuffle import parse_memory

            try:
                budget = parse_memory(self.global_shuffle)
            except SimtoolError:
                budget = 0
            if budget <= 0:
                raise SimtoolError(f"global_shuffle must be a size such as 1GiB, got {self.global_shuffle!r}")
        if not -1.0 < self.margin < 2.0:
            raise SimtoolError(f"margin must be in (-1, 2) (a cosine offset), got {self.margin}")
        if self.distill_weight > 0 and not self.teacher:
            raise SimtoolError("distill_weight needs teacher=MODEL (a model to distil from)")
        check_pooling(self.pooling)
        if self.accumulation == "naive" and self.mini_batch_size is None:
            raise SimtoolError("accumulation='naive' needs mini_batch_size (the size of each naive chunk)")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StepInfo:
    """What ``on_step`` sees after each optimizer step."""

    step: int
    epoch: int
    loss: float
    lr: float
    model: SentenceTransformer


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``OUTPUT/training_summary.json``)."""

    output: str
    steps: int
    epochs_completed: int
    final_loss: float
    seconds: float
    sentences_per_second: float
    world_size: int
    best_score: float | None = None
    best_step: int | None = None
    baseline_score: float | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- distributed and devices


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1; return ``(rank, world, device)``.

    NCCL with one GPU per process (``LOCAL_RANK``) when CUDA is available, gloo on CPU.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    elif world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return rank, world, torch.device(device)


def _all_reduce_mean(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch RNG state (CPU and, if used, CUDA): the only randomness of a training step."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA that supports it, fp16 on other CUDA, fp32 (no autocast) on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_dropout(model: torch.nn.Module, p: float) -> int:
    """Set every ``nn.Dropout`` (hidden and attention dropout in BERT-like encoders) to ``p``; return the count."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
            count += 1
    return count


# --------------------------------------------------------------------------- checkpoints


def checkpoints_dir(output: Path) -> Path:
    return output / "checkpoints"


def list_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, dir)`` in step order (a directory is complete once renamed into place)."""
    found = []
    directory = checkpoints_dir(output)
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith("step-") and (p / STATE_FILE).is_file():
                with contextlib.suppress(ValueError):
                    found.append((int(p.name[len("step-") :]), p))
    return sorted(found)


def latest_checkpoint(output: Path) -> Path | None:
    found = list_checkpoints(output)
    return found[-1][1] if found else None


def _save_model_dir(model: SentenceTransformer, target: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (plus ``extra`` files: name -> torch object or JSON) into ``target`` atomically."""
    with atomic_dir(target) as staging:
        model.save(str(staging), create_model_card=False)
        for name, obj in (extra or {}).items():
            if name.endswith(".json"):
                (staging / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
            else:
                torch.save(obj, staging / name)


def _publish_final_model(model_dir: Path, output: Path) -> None:
    """Copy a saved model's files into ``output`` (beside checkpoints/); ``modules.json`` goes last.

    Each file is renamed into place, so a reader sees either the old or the new version of it, and
    ``SentenceTransformer(output)`` works once ``modules.json`` is there.
    """
    with atomic_dir(output / "final-model", publish=_publish_entries) as staging:
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        for name in (STATE_FILE, "trainer_state.json", "best.json"):
            (staging / name).unlink(missing_ok=True)


def _publish_entries(staging: Path, target: Path) -> None:
    """Rename each entry of ``staging`` into ``target.parent`` (``modules.json`` last), not ``staging`` itself."""
    output = target.parent
    fsync_tree(staging)
    entries = sorted(staging.iterdir(), key=lambda p: p.name == "modules.json")
    for entry in entries:
        dest = output / entry.name
        if entry.is_dir():
            if dest.exists():
                replace_dir(entry, dest)
            else:
                os.rename(entry, dest)
        else:
            os.replace(entry, dest)
    fsync_dir(output)


# --------------------------------------------------------------------------- training


class _StopFlag:
    """Set by Ctrl-C (SIGINT) or by the ``on_step`` callback; training stops at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)

            def handler(signum: int, frame: Any) -> None:
                if self.requested:  # a second Ctrl-C stops at once
                    raise KeyboardInterrupt
                self.requested = True
                log.warning("stopping after this step (Ctrl-C again to abort)")

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _to_device(features: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def _check_output(config: TrainConfig, output: Path) -> Path | None:
    """The checkpoint to resume from (None: fresh start); refuse to train over an existing run."""
    if output.exists() and not output.is_dir():
        raise SimtoolError(f"output={str(output)!r} exists and is not a directory")
    if config.resume:
        checkpoint = latest_checkpoint(output)
        if checkpoint is None and output.is_dir() and any(output.iterdir()):
            raise SimtoolError(f"resume=True: {output} has no checkpoint to resume from")
        return checkpoint
    if output.is_dir() and any(output.iterdir()):
        raise SimtoolError(
            f"output={str(output)!r} already exists and is not empty; pass resume=True to continue its training "
            "or choose another directory"
        )
    return None


def _check_resume_config(config: TrainConfig, saved: dict[str, Any], checkpoint: Path) -> None:
    current = config.to_json()
    differing = [k for k, v in saved.items() if k not in RESUME_MAY_CHANGE and current.get(k) != v]
    if differing:
        detail = ", ".join(f"--{k.replace('_', '-')} {current.get(k)!r} (checkpoint: {saved[k]!r})" for k in differing)
        raise SimtoolError(f"resume=True: {checkpoint} was trained with other settings; differing: {detail}")


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup then linear decay to 0 at ``total`` (the Hugging Face default SimCSE trains with)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_loss(config: TrainConfig, model: torch.nn.Module, local_batch: int, dtype: torch.dtype | None) -> Any:
    """The recipe's loss module around ``model`` (possibly DDP-wrapped); cached when b < local batch."""
    cls = get_recipe(config.recipe).loss_class()
    mini_size = config.mini_batch_size
    cached = config.accumulation == "exact" and mini_size is not None
    mini = mini_size if cached and mini_size is not None and mini_size < local_batch else None
    return cls(
        model,
        scale=config.scale,
        margin=config.margin,
        hard_negative_weight=config.hard_negative_weight,
        symmetric=config.symmetric,
        same_view_negatives=config.same_view_negatives,
        distill_weight=config.distill_weight,
        mini_batch_size=mini,
        autocast_dtype=dtype,
    )


def train(
    config: TrainConfig,
    *,
    evaluate: Callable[[SentenceTransformer], float] | None = None,
    on_step: Callable[[StepInfo], bool | None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run (or resume) a training run; returns its :class:`TrainResult`.

    ``evaluate(model) -> score`` (higher is better, e.g. STS-B dev Spearman ×100) runs before training,
    every ``eval_steps`` and at the end, on rank 0; the best model is kept and becomes the final one.
    ``on_step(StepInfo)`` is called after every optimizer step; returning True stops the run at that
    step boundary as Ctrl-C does (a checkpoint is written, :class:`TrainingInterrupted` is raised).
    Bad input raises :class:`SimtoolError` before any work; a NaN loss raises :class:`NonFiniteLossError`.
    """
    return _Run(config, evaluate, on_step, progress).run()


class _Run:
    """One training run: set-up (or restore), the step loop, checkpoints, evaluation, the final model."""

    def __init__(
        self,
        config: TrainConfig,
        evaluate: Callable[[SentenceTransformer], float] | None,
        on_step: Callable[[StepInfo], bool | None] | None,
        progress: bool,
    ) -> None:
        from simtool.encoder import load_encoder
        from simtool.grad_cache import check_batch_sizes, wrap_ddp

        config.validate()
        self.config, self.evaluate, self.on_step, self.progress = config, evaluate, on_step, progress
        self.started = time.perf_counter()
        self.output, self.data = Path(config.output), Path(config.data)
        self.rank, self.world, self.device = init_distributed(config.device)
        self.local_batch = check_batch_sizes(config.batch_size, config.mini_batch_size, self.world)
        self.columns, n_rows = scan_training_file(self.data, config.recipe)
        if n_rows < config.batch_size:
            raise SimtoolError(
                f"{self.data}: {n_rows} training rows, fewer than one batch (batch_size={config.batch_size})"
            )
        checkpoint = _check_output(config, self.output)
        _barrier(self.world)  # every process has checked the directory before rank 0 writes into it
        state: dict[str, Any] | None = None
        if checkpoint is not None:
            state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
            _check_resume_config(config, state["config"], checkpoint)
            if state["world_size"] != self.world:
                raise SimtoolError(
                    f"resume=True: {checkpoint} was written by {state['world_size']} processes, not {self.world}"
                )

        self.dtype = autocast_dtype(config.precision, self.device)
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise SimtoolError("precision='fp16' needs a CUDA device; use bf16 or fp32 on CPU")
        self.recipe = get_recipe(config.recipe)
        # A recipe's model may get new randomly initialised layers (roformer-sim's LM head): the same seed on
        # every rank and every run gives the same initial model, so a run is reproducible and DDP equals 1 process.
        torch.manual_seed(config.seed)
        if self.recipe.build_model is not None:
            self.model = self.recipe.build_model(str(checkpoint) if checkpoint else config.model, str(self.device))
        else:
            self.model = load_encoder(
                checkpoint or config.model, pooling=None if checkpoint else config.pooling, device=str(self.device)
            )
        # --max-seq-length truncates training batches only (SimCSE trains on 32 tokens); evaluation and
        # every saved model keep the model's own limit, so the published model reads whole documents.
        self.model_max_seq_length = self.model.max_seq_length
        self.model.max_seq_length = config.max_seq_length
        if config.dropout is not None:
            set_dropout(self.model, config.dropout)
        self.model.train()
        self.teacher = None
        if config.teacher:
            self.teacher = load_encoder(config.teacher, device=str(self.device), max_seq_length=config.max_seq_length)
            self.teacher.eval()
        trained: torch.nn.Module = self.model
        if self.world > 1:
            trained = wrap_ddp(self.model, self._inputs([("a b", "c")] * 2, 0)[0][0], self.recipe.probe)
        self.loss_fn = build_loss(config, trained, self.local_batch, self.dtype)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
        )
        self.total_steps = config.max_steps or config.epochs * (n_rows // config.batch_size)
        self.scheduler = _linear_schedule(self.optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.baseline: float | None = None
        self.evals: list[dict[str, Any]] = []
        self.resumed_from: int | None = None
        self.last_saved = -1
        self.last_loss: float = float("nan")
        self.sentences = 0
        self.texts_per_step = config.batch_size * get_recipe(config.recipe).texts_per_row(self.columns)
        if state is not None:
            self._restore(state)
        else:
            if self.rank == 0 and evaluate is not None:
                self.baseline = self._evaluate(evaluate)
            # Seeded right before the first step, so the RNG stream depends on nothing before it (model
            # loading may draw numbers) and a resumed run continues the very same stream.
            torch.manual_seed(config.seed + self.rank)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(config.seed + self.rank)
        if self.rank == 0:
            checkpoints_dir(self.output).mkdir(parents=True, exist_ok=True)

    def _restore(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.baseline, self.evals = state["baseline_score"], list(state["evals"])
        self.last_loss = float(state["loss"])
        self.resumed_from = self.last_saved = self.step
        set_rng_state(state["rng"][self.rank], self.device)
        log_path = self.output / "train_log.jsonl"
        if self.rank == 0 and log_path.exists():
            # Steps after the checkpoint are trained again: drop their old lines.
            kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            with atomic_open(log_path, "w") as f:
                f.write("".join(line + "\n" for line in kept))

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        config = self.config
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.progress or self.rank != 0,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.loop_started = time.perf_counter()
        epochs_limit = math.inf if config.max_steps else config.epochs
        log_file = open(self.output / "train_log.jsonl", "a") if self.rank == 0 else None  # noqa: SIM115
        with _StopFlag() as stop, bar, log_file or contextlib.nullcontext():
            while self.step < self.total_steps and self.epoch < epochs_limit:
                batches = epoch_batches(
                    self.data,
                    self.columns,
                    config.batch_size,
                    seed=config.seed,
                    epoch=self.epoch,
                    shuffle_buffer=config.shuffle_buffer,
                    global_shuffle=config.global_shuffle,
                )
                seen = 0
                for index, batch in enumerate(batches):
                    seen += 1
                    if index < self.batch_in_epoch:
                        continue  # resuming: this batch was trained before the checkpoint
                    if self.step >= self.total_steps:
                        break
                    self._train_step(batch, index, stop)
                    if log_file is not None:
                        log_file.write(json.dumps(self.log_entry) + "\n")
                        log_file.flush()  # `tail -f` shows every step
                    rate = self.sentences / max(time.perf_counter() - self.loop_started, 1e-9)
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", sent_s=f"{rate:.0f}", refresh=False)
                    bar.update(1)
                    if self.step % config.eval_steps == 0:
                        self._evaluate_and_keep_best()
                    if self.step % config.save_steps == 0:
                        self._save_checkpoint(rng_state(self.device))
                    info = StepInfo(self.step, self.epoch, self.last_loss, self.log_entry["lr"], self.model)
                    if self.on_step is not None and self.on_step(info):
                        stop.requested = True
                else:
                    if seen == 0:
                        raise SimtoolError(
                            f"{self.data}: no batch of {config.batch_size} rows without a repeated sentence"
                        )
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    continue
                break
            if self.evaluate is not None and (not self.evals or self.evals[-1]["step"] != self.step):
                self._evaluate_and_keep_best()
            if self.last_saved != self.step:
                self._save_checkpoint(rng_state(self.device))
        return self._finish()

    def _train_step(self, batch: list[tuple[str, ...]], index: int, stop: _StopFlag) -> None:
        """One optimizer step on the global ``batch`` (this process trains its slice)."""
        from simtool.grad_cache import naive_accumulation_backward

        config = self.config
        t0 = time.perf_counter()
        rng_at_start = rng_state(self.device)
        rows = batch[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
        features, teacher_texts = self._inputs(rows, self.step)
        labels = None
        if self.teacher is not None:
            with torch.no_grad():
                labels = self.teacher.encode(teacher_texts, convert_to_tensor=True, batch_size=self.local_batch)
        if config.accumulation == "naive":
            assert config.mini_batch_size is not None  # TrainConfig rejects naive accumulation without it
            loss = naive_accumulation_backward(
                self.loss_fn, features, labels, config.mini_batch_size, scale=self.scaler.get_scale()
            )
        else:
            loss = self.loss_fn(features, labels)  # cached: the full-batch loss; its backward replays
        # One scalar all-reduce: the global loss (logged) and whether any process was asked to stop.
        mean_loss, stop_votes = _all_reduce_mean([loss.item(), float(stop.requested)], self.device, self.world)
        if stop_votes > 0:
            # The step has not changed the weights or the optimizer; save the state from before it.
            self.batch_in_epoch = index
            self._save_checkpoint(rng_at_start)
            where = checkpoints_dir(self.output) / f"step-{self.step:08d}"
            raise TrainingInterrupted(f"stopped at step {self.step}; checkpoint {where}; continue with resume=True")
        if not math.isfinite(mean_loss):
            good = latest_checkpoint(self.output)
            kept = f"the last good checkpoint is {good}" if good else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"the loss is {mean_loss} at step {self.step + 1}; training stopped and {kept} "
                "(try a lower --lr, or --precision fp32)"
            )
        if config.accumulation != "naive":
            self.scaler.scale(loss).backward()
        if config.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_in_epoch = index + 1
        self.last_loss = mean_loss
        self.sentences += self.texts_per_step
        seconds = round(time.perf_counter() - t0, 4)
        self.log_entry: dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch,
            "loss": mean_loss,
            "lr": lr,
            "s": seconds,
        }
        parts = getattr(self.loss_fn, "last_parts", None)
        if parts and len(parts) > 1:  # the named parts (this process's), when the loss has several
            self.log_entry["parts"] = {k: round(v, 6) for k, v in parts.items()}

    def _inputs(self, rows: list[tuple[str, ...]], step: int) -> tuple[list[dict[str, Any]], list[str]]:
        """The model inputs of ``rows`` (one features dict per column unless the recipe says otherwise) and the
        texts a teacher encodes."""
        if self.recipe.inputs is not None:
            features, teacher_texts = self.recipe.inputs(self.model, rows, self.config, step)
            return [_to_device(f, self.device) for f in features], teacher_texts
        texts = [list(column) for column in zip(*rows, strict=True)]
        return [_to_device(self.model.preprocess(column), self.device) for column in texts], texts[0]

    @contextlib.contextmanager
    def _as_published(self) -> Iterator[SentenceTransformer]:
        """The model with its own sequence limit (not the training one), as it is saved and evaluated."""
        self.model.max_seq_length = self.model_max_seq_length
        try:
            yield self.model
        finally:
            self.model.max_seq_length = self.config.max_seq_length

    def _save_model(self, target: Path, extra: dict[str, Any]) -> None:
        with self._as_published() as model:
            _save_model_dir(model, target, extra)

    def _evaluate(self, evaluate: Callable[[SentenceTransformer], float]) -> float:
        """Score the model in eval mode without disturbing the training RNG stream."""
        cuda = [p.device.index or 0 for p in self.model.parameters() if p.device.type == "cuda"][:1]
        with self._as_published() as model:
            model.eval()
            try:
                with torch.random.fork_rng(devices=cuda), torch.no_grad():
                    return float(evaluate(model))
            finally:
                model.train()

    def _save_checkpoint(self, rng: dict[str, Any]) -> None:
        """``checkpoints/step-N``: model + optimizer, scheduler, every process's RNG, data position."""
        rngs = _gather_objects(rng, self.world)
        if self.rank == 0:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "loss": self.last_loss,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rngs,
                "world_size": self.world,
                "config": self.config.to_json(),
                "best_score": self.best_score,
                "best_step": self.best_step,
                "baseline_score": self.baseline,
                "evals": self.evals,
            }
            summary = {"step": self.step, "epoch": self.epoch, "loss": self.last_loss}
            target = checkpoints_dir(self.output) / f"step-{self.step:08d}"
            self._save_model(target, {STATE_FILE: state, "trainer_state.json": summary})
            for _, old in list_checkpoints(self.output)[: -self.config.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        self.last_saved = self.step
        _barrier(self.world)

    def _evaluate_and_keep_best(self) -> None:
        if self.evaluate is None or self.rank != 0:
            return
        score = self._evaluate(self.evaluate)
        self.evals.append({"step": self.step, "score": score})
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step = score, self.step
            best = {"best.json": {"step": self.step, "score": score}}
            self._save_model(checkpoints_dir(self.output) / "best", best)
        if self.progress:
            log.info("step %d: eval %.2f (best %.2f at step %d)", self.step, score, self.best_score, self.best_step)

    def _finish(self) -> TrainResult:
        result = TrainResult(
            output=str(self.output),
            steps=self.step,
            epochs_completed=self.epoch,
            final_loss=self.last_loss,
            seconds=round(time.perf_counter() - self.started, 3),
            sentences_per_second=round(self.sentences / max(time.perf_counter() - self.loop_started, 1e-9), 1),
            world_size=self.world,
            best_score=self.best_score,
            best_step=self.best_step,
            baseline_score=self.baseline,
            evals=self.evals,
            resumed_from=self.resumed_from,
        )
        if self.rank == 0:
            best = checkpoints_dir(self.output) / "best"
            final = checkpoints_dir(self.output) / f"step-{self.step:08d}"
            _publish_final_model(best if self.evaluate is not None and best.is_dir() else final, self.output)
            if self.recipe.export is not None:
                self.recipe.export(self.output)
            atomic_write_json(
                self.output / "training_summary.json", {**result.to_json(), "config": self.config.to_json()}
            )
        _barrier(self.world)
        return result


def _gather_objects(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
