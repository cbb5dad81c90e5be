"""Benchmark one training step of unsupervised SimCSE: exact gradient caching vs a plain step vs sentence-transformers.

At batch ``--batch-size`` B (default 256 sentences, each encoded twice: 2B rows) the step computes the
parameter gradients of the in-batch contrastive loss (scale 20, dropout on):

* ``plain``: one forward with gradients over the whole batch, then backward (activations of all 2B rows);
* ``simtool b=…``: :class:`simtool.losses.UnsupSimCSELoss` with ``mini_batch_size`` b (exact gradient caching:
  a no-grad pass, the loss, then a replayed pass with gradients, b rows at a time);
* ``st-cached b=…``: sentence-transformers' ``CachedMultipleNegativesRankingLoss`` with the same b, scale and
  inputs (anchor = positive = the sentence, so the loss is the same unsupervised SimCSE loss).

Measured: the peak memory of one step per configuration, each in a fresh process after a warm-up step (on
CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the step; on CPU the peak resident
set ``VmHWM``, reset through ``/proc/self/clear_refs``, above the resident set before the step, with glibc
returning freed buffers to the OS at once); and the
median step time over ``--repeats`` rounds after a warm-up round, all configurations in one process, taking
turns within each round so that a change of machine load hits all of them alike; ratios are medians of the
per-round ratios, of process CPU time on CPU with ``--threads 1`` (immune to other jobs on a shared
machine), else of wall time. A step is forward +
backward (the optimizer update is the same for all and left out). Sentences: the Multi30k captions of the
shared data when present, else synthetic word strings.

Goals (the issue's): peak memory follows b, not B; the cached step at most 1.4x the plain step; at most 1.05x
sentence-transformers' cached loss at the same b.

Run (from the repo root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py                   # default model, CPU or GPU
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py --model tiny --repeats 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py --batch-size 4096 --mini-batches 256 --json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_WORD_LIST = "a man woman dog cat child red blue green runs sits jumps on the in with ball street water park"
WORDS = _WORD_LIST.split()


def shared_captions() -> Path | None:
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = root / "unlabeled" / "multi30k_en_captions_dedup_decontaminated.txt.gz"
    return path if path.is_file() else None


def sentences(n: int) -> tuple[list[str], str]:
    path = shared_captions()
    if path is not None:
        out = []
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    out.append(line.strip())
                if len(out) == n:
                    return out, f"Multi30k captions ({path.name})"
    rng = random.Random(0)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 20))) for _ in range(n)], "synthetic word strings"


def tiny_model_dir() -> str:
    """A 2-layer, 128-wide random BERT with a small vocabulary (for a quick run)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = Path(tempfile.mkdtemp(prefix="bench-train-tiny-"))
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *(f"##{c}" for c in chars)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    BertTokenizer(vocab=vocab).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512
    )
    BertModel(config).save_pretrained(directory)
    return str(directory)


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _step_functions(model: Any, batch_size: int, configs: list[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """One ``features -> loss`` function per configuration; each computes the gradients (backward included)."""
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    from simtool.losses import UnsupSimCSELoss

    def make(method: str, b: int) -> Any:
        if method == "plain":
            loss_fn = UnsupSimCSELoss(model, scale=20.0)
            columns = 1
        elif method == "simtool":
            loss_fn = UnsupSimCSELoss(model, scale=20.0, mini_batch_size=b)
            columns = 1
        else:
            loss_fn = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=b)
            columns = 2  # anchor = positive = the sentence: the same unsupervised SimCSE loss

        def step(features: dict) -> float:
            loss = loss_fn([features] * columns, None)
            loss.backward()
            return loss.item()

        return step

    return {config: make(*config) for config in configs}


def _load(args: argparse.Namespace) -> tuple[Any, list[dict]]:
    import torch

    from simtool.encoder import load_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_encoder(args.model_path, device=args.device, max_seq_length=args.max_seq_length)
    model.train()
    texts, _ = sentences(args.batch_size * (args.repeats + 1))
    batches = []
    for i in range(0, len(texts), args.batch_size):
        features = model.preprocess(texts[i : i + args.batch_size])
        batches.append({k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()})
    return model, batches


def memory_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one configuration's step (warm-up step, then a measured one), in this fresh process."""
    import torch

    model, batches = _load(args)
    config = (args.method, args.mini_batch_size)
    step = _step_functions(model, args.batch_size, [config])[config]
    torch.manual_seed(0)
    step(batches[0])  # warm-up: gradient buffers and allocator caches exist afterwards, as in training
    model.zero_grad(set_to_none=False)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set (VmHWM)
    loss = step(batches[1])
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024) - base
    return {"peak_mib": peak / 2**20, "loss": loss}


def timing_worker(
    args: argparse.Namespace, configs: list[tuple[str, int]]
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """``(wall s, process CPU s)`` per step of every configuration, interleaved round by round so that a
    change of machine load hits all of them alike; round 0 is a warm-up and not returned."""
    import torch

    model, batches = _load(args)
    steps = _step_functions(model, args.batch_size, configs)
    cuda = args.device.startswith("cuda")
    times: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in configs}
    for round_, features in enumerate(batches):
        for config in configs:
            model.zero_grad(set_to_none=False)
            t0, c0 = time.perf_counter(), time.process_time()
            steps[config](features)
            if cuda:
                torch.cuda.synchronize()
            if round_ > 0:
                times[config].append((time.perf_counter() - t0, time.process_time() - c0))
        print(f"round {round_} done", file=sys.stderr, flush=True)
    return times


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b: each round's pair ran back to back, under the same load."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _resolve(model: str | None) -> Path:
    from simtool.encoder import resolve_model_path

    return resolve_model_path(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model path or name; 'tiny' = a random 2-layer BERT")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mini-batches", default="8,32,256")
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--skip-st", action="store_true", help="leave out sentence-transformers' cached loss")
    parser.add_argument("--no-memory", action="store_true", help="time only (skip the memory processes)")
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mini-batch-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(memory_worker(args)))
        return

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.model_path = tiny_model_dir() if args.model == "tiny" else str(_resolve(args.model))
    minis = [int(x) for x in args.mini_batches.split(",")]
    configs = [("plain", args.batch_size)] + [("simtool", b) for b in minis]
    if not args.skip_st:
        configs += [("st-cached", b) for b in minis]
    _, source = sentences(1)
    if not args.json:
        print(
            f"model {args.model or 'all-MiniLM-L6-v2'}, device {args.device}, B={args.batch_size} sentences "
            f"({2 * args.batch_size} rows), max_seq_length {args.max_seq_length}, {args.repeats} timed rounds "
            f"(+1 warm-up), torch threads {args.threads or torch.get_num_threads()}; data: {source}",
            flush=True,
        )
    results: dict[tuple[str, int], dict[str, Any]] = {c: {"method": c[0], "mini_batch_size": c[1]} for c in configs}
    for method, b in configs if not args.no_memory else []:
        cmd = [sys.executable, __file__, "--worker", "1", "--model-path", args.model_path, "--method", method]
        cmd += ["--mini-batch-size", str(b), "--batch-size", str(args.batch_size), "--device", args.device]
        cmd += ["--repeats", "1", "--max-seq-length", str(args.max_seq_length), "--threads", str(args.threads)]
        # A fixed mmap threshold: glibc then returns every freed tensor buffer to the OS at once, so the
        # resident set tracks live memory and the warm-up step's freed memory does not hide the peak.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            sys.exit(f"{method} b={b} failed:\n{done.stderr[-3000:]}")
        results[(method, b)].update(json.loads(done.stdout.strip().splitlines()[-1]))
    # On CPU with one thread, process CPU time is the cost measure: other jobs on a shared machine stretch
    # wall time but not it. On CUDA (or several CPU threads, which spin) wall time is.
    use_cpu = args.device == "cpu" and (args.threads or torch.get_num_threads()) == 1
    for config, times in timing_worker(args, configs).items():
        wall, cpu = [t[0] for t in times], [t[1] for t in times]
        results[config].update(
            {"median_s": statistics.median(wall), "median_cpu_s": statistics.median(cpu), "wall_s": wall, "cpu_s": cpu}
        )
        results[config]["cost"] = cpu if use_cpu else wall
    plain = results[("plain", args.batch_size)]
    for (method, b), r in results.items():
        r["vs_plain"] = paired_ratio(r["cost"], plain["cost"])
        st = results.get(("st-cached", b))
        r["vs_st_cached"] = paired_ratio(r["cost"], st["cost"]) if st and method == "simtool" else None
        r["sentences_per_s"] = args.batch_size / r["median_s"]
        r["cost_measure"] = "process CPU time" if use_cpu else "wall time"
    for r in results.values():
        r.pop("cost")
        if args.json:
            print(json.dumps({"device": args.device, "batch_size": args.batch_size, **r}))
    if args.json:
        return
    print(f"ratios: medians of per-round ratios of {'process CPU' if use_cpu else 'wall'} time")
    head = f"{'method':<12}{'b':>6}{'wall s':>9}{'cpu s':>9}{'sent/s':>9}{'peak MiB':>10}{'x plain':>9}{'x st':>7}"
    print(head)
    for (method, b), r in results.items():
        vs_st = f"{r['vs_st_cached']:.2f}" if r["vs_st_cached"] is not None else "-"
        peak = f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-"
        print(
            f"{method:<12}{b:>6}{r['median_s']:>9.2f}{r['median_cpu_s']:>9.2f}{r['sentences_per_s']:>9.1f}"
            f"{peak:>10}{r['vs_plain']:>9.2f}{vs_st:>7}"
        )


if __name__ == "__main__":
    main()
