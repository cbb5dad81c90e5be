"""Exact gradient caching: parameter gradients with (B, b) equal the full-batch gradients, dropout on.

The full-batch reference back-propagates the full-batch loss through every row at once (ordinary autograd
over the whole batch). With dropout the masks are random, so the reference draws them in the same order
and shapes as the cached run (column by column, mini-batch by mini-batch, from the same seed): both then
see identical masks, and any difference is an error of the caching, which is what is tested.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest
import torch
from conftest import WORDS

from simtool.encoder import load_encoder
from simtool.errors import SimtoolError
from simtool.grad_cache import check_batch_sizes, naive_accumulation_backward
from simtool.grad_cache import minibatch as _create_minibatch
from simtool.losses import InBatchContrastiveLoss, SupSimCSELoss, UnsupSimCSELoss

B = 8
SEED = 1234


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    # Varying lengths, so that mini-batches trim padding differently from the full batch.
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def model(tiny_bert: Path):
    m = load_encoder(tiny_bert, pooling="mean", device="cpu")
    m.train()  # dropout 0.1 on every layer of the tiny BERT
    return m


def batch_features(model, recipe: str, rows: int = B, seed: int = 0) -> list[dict]:
    if recipe == "unsup":
        return [model.preprocess(sentences(rows, seed))]
    return [model.preprocess(sentences(rows, seed + k)) for k in (0, 1, 2)]


def gradients(model) -> dict[str, torch.Tensor | None]:
    return {name: None if p.grad is None else p.grad.detach().clone() for name, p in model.named_parameters()}


def cached_gradients(model, loss: InBatchContrastiveLoss, features, labels=None) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    value = loss(features, labels)
    value.backward()
    return value.item(), gradients(model)


def full_batch_gradients(model, loss: InBatchContrastiveLoss, features, b: int, labels=None) -> tuple[float, dict]:
    """Autograd through the whole batch's graph; dropout masks drawn as the cached run draws them."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    columns = features if len(features) > 1 else [features[0], features[0]]
    rows = len(columns[0]["input_ids"])
    embeddings = [
        torch.cat([loss.embed(_create_minibatch(f, start, start + b)) for start in range(0, rows, b)]) for f in columns
    ]
    value = loss.embeddings_loss(embeddings, labels)
    value.backward()
    return value.item(), gradients(model)


def max_relative_error(got: dict, expected: dict) -> float:
    """max over parameter tensors of ||g − g_ref|| / ||g_ref||; both must have gradients on the same tensors.

    A tensor whose true gradient is zero (BERT's attention key bias: softmax ignores a shift shared by all
    keys) holds only rounding noise; such tensors (norm < 1e-4 of the whole gradient's) are measured
    against the whole gradient's norm instead.
    """
    assert {k for k, v in got.items() if v is not None} == {k for k, v in expected.items() if v is not None}
    total = float(torch.sqrt(sum((v.double() ** 2).sum() for v in expected.values() if v is not None)))
    worst = 0.0
    for name, ref in expected.items():
        if ref is not None:
            norm = float(ref.norm())
            worst = max(worst, float((got[name] - ref).norm()) / (norm if norm >= 1e-4 * total else total))
    return worst


@pytest.mark.parametrize("recipe", ["unsup", "sup"])
@pytest.mark.parametrize("margin", [0.0, 0.2])
@pytest.mark.parametrize("b", [1, 2, B // 2])
def test_cached_gradients_equal_full_batch_gradients(model, recipe: str, margin: float, b: int) -> None:
    cls = UnsupSimCSELoss if recipe == "unsup" else SupSimCSELoss
    features = batch_features(model, recipe)
    loss_value, cached = cached_gradients(model, cls(model, margin=margin, mini_batch_size=b), features)
    ref_value, full = full_batch_gradients(model, cls(model, margin=margin), features, b)
    assert loss_value == pytest.approx(ref_value, rel=1e-6)  # the logged loss is the true full-batch loss
    assert max_relative_error(cached, full) < 1e-5

    # Ordinary accumulation with the same masks trains b-row batches: its gradients are different.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    naive_accumulation_backward(cls(model, margin=margin), features, None, b)
    assert max_relative_error(gradients(model), full) > 1e-2


def test_every_loss_option_is_exact_and_dropout_masks_matter(model) -> None:
    options = {"margin": 0.1, "hard_negative_weight": 2.0, "symmetric": True, "same_view_negatives": True}
    teacher = torch.randn(B, 6, generator=torch.Generator().manual_seed(0))
    options["distill_weight"] = 100.0
    features = batch_features(model, "sup")
    _, cached = cached_gradients(model, SupSimCSELoss(model, mini_batch_size=2, **options), features, teacher)
    _, full = full_batch_gradients(model, SupSimCSELoss(model, **options), features, 2, teacher)
    assert max_relative_error(cached, full) < 1e-5
    # Without the RNG replay the re-forward draws new masks: the gradients are then wrong, which is why
    # Su (kexue.fm/8471) concluded SimCSE could not use exact accumulation.
    _, other_masks = full_batch_gradients(model, SupSimCSELoss(model, **options), features, 4, teacher)
    assert max_relative_error(cached, other_masks) > 1e-2


def test_without_dropout_cached_gradients_equal_one_plain_full_batch_pass(model) -> None:
    model.eval()  # no dropout: the reference is one ordinary forward/backward over all B rows
    try:
        features = batch_features(model, "sup")
        _, cached = cached_gradients(model, SupSimCSELoss(model, margin=0.2, mini_batch_size=2), features)
        _, plain = cached_gradients(model, SupSimCSELoss(model, margin=0.2), features)
        assert max_relative_error(cached, plain) < 1e-5
    finally:
        model.train()


def test_cached_gradients_under_bf16_autocast_match_the_autocast_full_batch(model) -> None:
    features = batch_features(model, "unsup")
    kwargs = {"margin": 0.2, "autocast_dtype": torch.bfloat16}
    _, cached = cached_gradients(model, UnsupSimCSELoss(model, mini_batch_size=2, **kwargs), features)
    _, full = full_batch_gradients(model, UnsupSimCSELoss(model, **kwargs), features, 2)
    # The replay recomputes the bf16 forward of the first pass, but on a CPU with native bf16 kernels a 2-row
    # mini-batch and the 4-row full batch round differently: bf16's unit roundoff is 3.9e-3 (measured 4.1e-3).
    assert max_relative_error(cached, full) < 2e-2
    _, fp32 = full_batch_gradients(model, UnsupSimCSELoss(model, margin=0.2), features, 2)
    assert max_relative_error(cached, fp32) > 1e-4  # autocast really ran in bf16


@pytest.mark.parametrize(
    ("batch", "mini", "world", "message"),
    [
        (8, 16, 1, "larger than the batch"),
        (12, 8, 1, "not a multiple"),
        (8, 0, 1, "must be positive"),
        (0, None, 1, "must be positive"),
        (9, None, 2, "not divisible"),
        (8, 8, 2, "larger than the batch of 4 per process"),
    ],
)
def test_batch_size_errors(batch: int, mini: int | None, world: int, message: str) -> None:
    with pytest.raises(SimtoolError, match=message):
        check_batch_sizes(batch, mini, world)
    assert check_batch_sizes(16, 4, 2) == 8 and check_batch_sizes(16, None) == 16


# --------------------------------------------------------------------------- DDP, 2 processes, gloo on CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, model_dir: str, out_dir: str) -> None:
    """One torchrun-like process: the environment torchrun sets, then simtool's own process-group setup."""
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    import torch.distributed as dist

    from simtool.grad_cache import wrap_ddp
    from simtool.training import TrainConfig, init_distributed, train

    init_distributed("cpu")
    model = load_encoder(model_dir, pooling="mean", device="cpu")
    model.train()
    ddp = wrap_ddp(model, model.preprocess(["a b", "c"]))
    reduced_buckets: list[int] = []

    def counting_allreduce(state, bucket):
        reduced_buckets.append(bucket.index())
        tensor = bucket.buffer().div_(world)
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])

    ddp.register_comm_hook(None, counting_allreduce)
    features = batch_features(model, "sup")
    local = B // world
    features = [_create_minibatch(f, rank * local, (rank + 1) * local) for f in features]
    torch.manual_seed(SEED + rank)
    loss = SupSimCSELoss(ddp, margin=0.2, mini_batch_size=2)(features, None)
    loss.backward()
    grads = gradients(model)
    cached_buckets = list(reduced_buckets)
    # The uncached path too: each column one DDP forward with gradients, one backward.
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED + rank)
    SupSimCSELoss(ddp, margin=0.2)(features, None).backward()
    plain_grads = gradients(model)
    # The same optimizer step through the training loop, as `torchrun -m simtool train` runs it.
    summary = train(
        TrainConfig(
            recipe="simcse-sup",
            data=str(Path(out_dir) / "triplets.csv"),
            output=str(Path(out_dir) / "run"),
            model=model_dir,
            pooling="mean",
            batch_size=B,
            mini_batch_size=2,
            max_steps=2,
            dropout=0.0,
            lr=1e-3,
            shuffle_buffer=0,
        ),
        progress=False,
    )
    torch.save(
        {
            "loss": loss.item(),
            "grads": grads,
            "plain_grads": plain_grads,
            "buckets": cached_buckets,
            "summary": summary.to_json(),
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def _write_triplets(path: Path, rows: int) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sent0", "sent1", "hard_neg"])
        for i, (a, p, n) in enumerate(zip(sentences(rows, 7), sentences(rows, 8), sentences(rows, 9), strict=True)):
            w.writerow([f"{a} {i}", f"{p} {i}", f"{n} {i}"])
    return path


@pytest.mark.slow
def test_ddp_two_processes_gloo_equal_single_process_full_batch(tiny_bert: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from simtool.training import TrainConfig, train

    _write_triplets(tmp_path / "triplets.csv", 24)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tiny_bert), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # Single process, whole batch: rank r's rows embedded with rank r's RNG stream (the masks the DDP run drew).
    model = load_encoder(tiny_bert, pooling="mean", device="cpu")
    model.train()
    loss_fn = SupSimCSELoss(model, margin=0.2)
    features = batch_features(model, "sup")
    local = B // 2

    def reference(chunk: int) -> tuple[float, dict]:
        per_rank = []
        for rank in (0, 1):
            torch.manual_seed(SEED + rank)
            rows = [_create_minibatch(f, rank * local, (rank + 1) * local) for f in features]
            chunks = range(0, local, chunk)
            per_rank.append(
                [torch.cat([loss_fn.embed(_create_minibatch(f, s, s + chunk)) for s in chunks]) for f in rows]
            )
        columns = [torch.cat([per_rank[0][c], per_rank[1][c]]) for c in range(3)]
        expected = loss_fn.embeddings_loss(columns)
        model.zero_grad(set_to_none=True)
        expected.backward()
        # DDP freezes BERT's pooler, which the sentence embedding never uses.
        return expected.item(), {k: v for k, v in gradients(model).items() if "pooler" not in k}

    expected_loss, cached_reference = reference(2)
    _, plain_reference = reference(local)
    for result in results:
        grads = {k: v for k, v in result["grads"].items() if "pooler" not in k}
        assert max_relative_error(grads, cached_reference) < 1e-5
        plain = {k: v for k, v in result["plain_grads"].items() if "pooler" not in k}
        assert max_relative_error(plain, plain_reference) < 1e-5
        # One all-reduce per optimizer step: every gradient bucket reduced exactly once, not once per replay.
        assert result["buckets"] and len(result["buckets"]) == len(set(result["buckets"]))
    assert (results[0]["loss"] + results[1]["loss"]) / 2 == pytest.approx(expected_loss, rel=1e-6)

    # The training loop under DDP logs the global-batch loss: dropout off, it equals a 1-process run's.
    single = train(
        TrainConfig(
            recipe="simcse-sup",
            data=str(tmp_path / "triplets.csv"),
            output=str(tmp_path / "single"),
            model=str(tiny_bert),
            pooling="mean",
            batch_size=B,
            mini_batch_size=2,
            max_steps=2,
            dropout=0.0,
            lr=1e-3,
            shuffle_buffer=0,
        ),
        progress=False,
    )
    ddp_summary = results[0]["summary"]
    assert ddp_summary["world_size"] == 2 and ddp_summary["steps"] == 2
    assert ddp_summary["final_loss"] == pytest.approx(single.final_loss, rel=1e-4)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2 and state["world_size"] == 2
