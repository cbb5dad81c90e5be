"""`torchrun --nproc-per-node 2 -m simtool train` (gloo, CPU) trains the weights of one process on the full batch."""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WORDS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _triplets(path: Path, rows: int) -> Path:
    rng = random.Random(3)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1", "hard_neg"])
        for i in range(rows):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + f" {i}" for _ in range(3)])
    return path


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    # The final model and its module folders (1_Pooling, 2_Dense, ...), not checkpoints/.
    files = sorted([*model_dir.glob("*.safetensors"), *model_dir.glob("[0-9]*_*/*.safetensors")])
    assert files, f"no weights under {model_dir}"
    return {f"{p.relative_to(model_dir)}:{k}": v for p in files for k, v in load_file(p).items()}


def _pairs(path: Path, rows: int) -> Path:
    rng = random.Random(5)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1"])
        for i in range(rows):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(2, 8))) + f" {i}" for _ in range(2)])
    return path


def _train_ddp_and_single(args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """``simtool train ARGS`` under torchrun with 2 processes (gloo, CPU) and as one process, same global batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    ddp = subprocess.run(
        [*launch, "--master-port", str(_free_port()), "-m", "simtool", *args, "-o", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "simtool", *args, "-o", str(tmp_path / "single")],
        env=env, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    # Rank 0 alone wrote the final model: one copy, no per-rank leftovers.
    assert not list((tmp_path / "ddp").glob("*rank*"))
    return tmp_path / "ddp", tmp_path / "single"


def _assert_same_trained_weights(start_dir: Path, ddp_dir: Path, single_dir: Path) -> None:
    import torch

    start, trained, reference = _weights(start_dir), _weights(ddp_dir), _weights(single_dir)
    assert trained.keys() == reference.keys()
    # softmax(q.k + q.b) == softmax(q.k): the attention key bias gets a gradient of float noise, which AdamW
    # scales to lr-sized steps that differ run to run; it cannot change an output, so the outputs are compared.
    noise_only = {k for k in reference if k.endswith("attention.self.key.bias")}
    moved = 0
    for key, expected in reference.items():
        if key in noise_only:
            continue
        torch.testing.assert_close(trained[key], expected, rtol=1e-4, atol=1e-5, msg=key)
        moved += key in start and not torch.equal(start[key], expected)
    assert moved > 0, "training changed no weight: the comparison would hold for an untrained model"


@pytest.mark.slow  # two torchrun processes plus a single-process run of the CLI
@pytest.mark.timeout(240)
def test_torchrun_two_processes_cli_equals_single_process_full_batch(tiny_bert: Path, tmp_path: Path) -> None:
    data = _triplets(tmp_path / "triplets.csv", 32)
    # Dropout off and file order: the only difference left between the runs is who embeds which rows.
    args = ["train", "--recipe", "simcse-sup", "--data", str(data), "--model", str(tiny_bert), "--pooling", "mean",
            "--batch-size", "16", "--mini-batch-size", "4", "--max-steps", "2", "--lr", "1e-3", "--dropout", "0",
            "--shuffle-buffer", "0", "--device", "cpu", "--json"]  # fmt: skip
    ddp, single = _train_ddp_and_single(args, tmp_path)
    _assert_same_trained_weights(tiny_bert, ddp, single)
    from simtool.encoder import encode_texts, load_encoder

    texts = [" ".join(WORDS[i : i + 6]) for i in range(0, 60, 6)]
    vectors = [encode_texts(load_encoder(run, device="cpu"), texts) for run in (ddp, single)]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5, rtol=0)


@pytest.mark.slow  # two torchrun processes plus a single-process run of the CLI
@pytest.mark.timeout(240)
def test_torchrun_roformer_sim_equals_single_process_full_batch(tiny_bert: Path, tmp_path: Path) -> None:
    """The combined loss under DDP: [CLS] vectors all-gathered for the contrastive part, the seq2seq part
    normalised over the global batch, so 2 processes x 4 pairs train what 1 process x 8 pairs does."""
    import torch

    data = _pairs(tmp_path / "pairs.csv", 16)
    args = ["train", "--recipe", "roformer-sim", "--data", str(data), "--model", str(tiny_bert),
            "--batch-size", "8", "--mini-batch-size", "2", "--max-steps", "2", "--lr", "1e-3", "--dropout", "0",
            "--max-seq-length", "32", "--shuffle-buffer", "0", "--device", "cpu", "--json"]  # fmt: skip
    ddp, single = _train_ddp_and_single(args, tmp_path)
    _assert_same_trained_weights(tiny_bert, ddp, single)
    # The LM head (not in the start checkpoint) trained identically too, and it did train.
    head = {k: v for k, v in _weights(single).items() if k.startswith("3_UniLMHead")}
    assert head and any(not torch.equal(v, torch.zeros_like(v)) for k, v in head.items() if k.endswith("bias"))
