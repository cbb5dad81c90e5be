"""Exact gradient accumulation for in-batch-negative losses (techniques.md §1; GradCache, Gao et al. 2021).

Plain gradient accumulation (``gradient_accumulation_steps`` in the Hugging Face Trainer) does **not** enlarge
the negative set: each accumulated chunk is its own little batch, scored only against its own rows, so b rows
x k steps trains a batch-b contrastive loss, not a batch-(k·b) one. The exact scheme, per optimizer step over a
batch of B rows split into mini-batches of b:

1. embed every mini-batch without gradients, saving the RNG state before each one;
2. compute the full-batch loss on the B embeddings (this is the logged loss) and ``dL/dh`` for every row;
3. re-embed each mini-batch with gradients, restoring its saved RNG state so that dropout draws the same masks
   as in step 1, and back-propagate ``<h, dL/dh>``: the parameter gradients sum to the full-batch gradient.

Memory follows b (activations of one mini-batch plus B embeddings); compute is one extra forward pass.

This module builds on sentence-transformers' :class:`~sentence_transformers.base.losses.gradcache.CachedLossMixin`,
which already does steps 1-3, the RNG replay (``RandContext``: CPU and CUDA generators), the mini-batch ranges
(replayed identically, padding trimmed per mini-batch) and, under DDP, the replays inside ``no_sync`` except the
last, so the parameter gradients are all-reduced **once** per optimizer step. simtool adds what its training
needs on top: autocast around every encoder pass (so that the replay recomputes exactly what step 1 computed
under mixed precision) with float32 embeddings for the loss, batch-size validation, the all-gather of
embeddings across ranks (in :mod:`simtool.losses`), DDP wrapping and a naive-accumulation step for comparison.

Exactness holds when the encoder is deterministic given its inputs and RNG state (no BatchNorm-like
cross-row statistics), which is the case for transformer encoders; GPU kernels may add float noise.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from sentence_transformers.base.losses.gradcache import CachedLossMixin, RandContext, _create_minibatch, _get_batch_size
from sentence_transformers.util import all_gather_with_grad as _st_all_gather_with_grad
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from simtool.errors import SimtoolError


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` ``(n, d)`` from every rank into ``(world·n, d)``; gradients reach the local slice.

    The backward sums, over ranks, the gradients with respect to each rank's slice (reduce-scatter), so a rank's
    embeddings receive the gradient of every rank's loss terms that use them as candidates.
    """
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.distributed.nn.all_gather, which sentence-transformers still uses.
        warnings.simplefilter("ignore", FutureWarning)
        return _st_all_gather_with_grad(tensor)


def check_batch_sizes(batch_size: int, mini_batch_size: int | None, world_size: int = 1) -> int:
    """Validate B (global batch), b (mini-batch) and the number of processes; return the per-process batch.

    B must split evenly over processes (each holds B / world rows), and every process's rows must split
    into whole mini-batches: uneven chunks would still be exact, but equal shapes keep the replay and the
    memory bound simple and make a wrong setting visible instead of silently changing the cost.
    """
    if batch_size <= 0:
        raise SimtoolError(f"--batch-size must be positive, got {batch_size}")
    if batch_size % world_size:
        raise SimtoolError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
    local = batch_size // world_size
    if mini_batch_size is None:
        return local
    if mini_batch_size <= 0:
        raise SimtoolError(f"--mini-batch-size must be positive, got {mini_batch_size}")
    if mini_batch_size > local:
        where = f" per process ({batch_size} over {world_size})" if world_size > 1 else ""
        raise SimtoolError(f"--mini-batch-size {mini_batch_size} is larger than the batch of {local}{where}")
    if local % mini_batch_size:
        raise SimtoolError(
            f"--batch-size {local} (per process) is not a multiple of --mini-batch-size {mini_batch_size}"
        )
    return local


class ExactCachedLossMixin(CachedLossMixin):
    """CachedLossMixin whose every encoder pass (plain, cached, replayed) runs under the same autocast.

    A subclass sets ``model`` (a SentenceTransformer, possibly DDP-wrapped), ``mini_batch_size`` and
    ``autocast_dtype`` (None = no autocast) and implements ``calculate_loss``. Embeddings come back float32.
    """

    autocast_dtype: torch.dtype | None = None

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """Sentence embeddings ``(n, d)`` float32 of tokenised ``features``, with gradients if enabled."""
        device = next(iter(v for v in features.values() if isinstance(v, Tensor))).device
        autocast = (
            torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            embeddings = self.model(features)["sentence_embedding"]
        return embeddings.float()

    def embed_minibatch(
        self,
        sentence_feature: dict[str, Tensor],
        begin: int,
        end: int,
        with_grad: bool,
        copy_random_state: bool,
        random_state: RandContext | None = None,
    ) -> tuple[Tensor, RandContext | None]:
        """CachedLossMixin hook: embed rows ``begin:end``; snapshot the RNG first, or replay a snapshot."""
        minibatch = _create_minibatch(sentence_feature, begin, end)
        replay = nullcontext() if random_state is None else random_state
        with replay, nullcontext() if with_grad else torch.no_grad():
            snapshot = RandContext(*minibatch.values()) if copy_random_state else None
            embeddings = self.embed(minibatch)
        return embeddings, snapshot


def naive_accumulation_backward(
    loss: Any,
    sentence_features: list[dict[str, Tensor]],
    labels: Tensor | None,
    mini_batch_size: int,
    *,
    scale: float = 1.0,
) -> Tensor:
    """Ordinary gradient accumulation, for comparison only: each mini-batch is its own contrastive batch.

    Back-propagates ``scale · mean_k L(chunk_k)`` (one chunk at a time; DDP syncs only on the last) and
    returns the detached mean chunk loss. Its gradients are NOT those of the full-batch loss.
    """
    if loss.duplicate_single_column and len(sentence_features) == 1:
        sentence_features = [sentence_features[0], sentence_features[0]]
    rows = _get_batch_size(sentence_features[0])
    starts = list(range(0, rows, mini_batch_size))
    model = loss.model
    total = torch.zeros(())
    for k, begin in enumerate(starts):
        end = begin + mini_batch_size
        sync = k == len(starts) - 1
        context = model.no_sync() if isinstance(model, DistributedDataParallel) and not sync else nullcontext()
        with context:
            columns = [loss.embed(_create_minibatch(f, begin, end)) for f in sentence_features]
            chunk_labels = None if labels is None else labels[begin:end]
            value = loss.embeddings_loss(columns, chunk_labels) / len(starts)
            (value * scale).backward()
        total = total + value.detach().cpu()
    return total


def freeze_unused_parameters(model: nn.Module, sample_features: dict[str, Tensor]) -> list[str]:
    """Set ``requires_grad=False`` on parameters that never reach the sentence embedding; return their names.

    Needed before DDP (``find_unused_parameters=False``): e.g. BERT's pooler runs in the forward but the
    embedding does not use it, so it never gets a gradient and DDP would wait for it forever. Freezing
    changes nothing else: such parameters have no gradient, so the optimizer never updates them.
    """
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # keep the training RNG streams untouched
        model.zero_grad(set_to_none=True)
        model(sample_features)["sentence_embedding"].float().sum().backward()
    frozen = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.requires_grad_(False)
            frozen.append(name)
    model.zero_grad(set_to_none=True)
    return frozen


def wrap_ddp(model: nn.Module, sample_features: dict[str, Tensor]) -> DistributedDataParallel:
    """Wrap ``model`` for data-parallel training (process group already initialised, model on its device)."""
    freeze_unused_parameters(model, sample_features)
    device = next(model.parameters()).device
    # BERT's buffers (position ids) are constants: no broadcast before every forward pass. torch 2.13
    # renamed the option; older versions only know broadcast_buffers.
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync_buffers = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync_buffers
    )
