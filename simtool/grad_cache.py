"""Exact gradient accumulation for in-batch-negative losses (techniques.md §1; GradCache, Gao et al. 2021).

Plain gradient accumulation (``gradient_accumulation_steps`` in the Hugging Face Trainer) does **not** enlarge
the negative set: each accumulated chunk is its own little batch, scored only against its own rows, so b rows
x k steps trains a batch-b contrastive loss, not a batch-(k·b) one. The exact scheme, per optimizer step over a
batch of B rows split into mini-batches of b (GradCache's four steps):

1. embed every mini-batch without gradients, saving the RNG state before each one (:class:`RandContext`);
2. compute the full-batch loss on the B embeddings (this is the logged loss) and ``dL/dh`` for every row, in
   row chunks of b queries (each chunk scores its queries against all B candidates), so the largest live
   logit block is (b, B), never (B, B): memory follows b even at B = 4096+;
3. re-embed each mini-batch with gradients, restoring its saved RNG state so that dropout draws the same masks
   as in step 1;
4. back-propagate ``<h, dL/dh>`` per mini-batch: the parameter gradients sum to the full-batch gradient.

simtool owns this core (about a hundred lines, no private sentence-transformers names), so its behaviour does
not change with the installed sentence-transformers version: autocast around every encoder pass (the replay
recomputes exactly what step 1 computed under mixed precision) with float32 embeddings for the loss; under DDP
the replays run inside ``no_sync`` except the last, so the parameter gradients are all-reduced **once** per
optimizer step, and step 2 gathers the embeddings once and sums ``dL/dh`` over ranks with one all-reduce per
column (what the backward of an all-gather does). Losses plug in through :meth:`ExactCachedLossMixin.rows_loss`.

Exactness holds when the encoder is deterministic given its inputs and RNG state (no BatchNorm-like
cross-row statistics), which is the case for transformer encoders; GPU kernels may add float noise.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from sentence_transformers.util import all_gather_with_grad as _st_all_gather_with_grad
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from simtool.errors import SimtoolError
from simtool.validate import check_batch_size, check_positive


class RandContext:
    """Snapshot the CPU RNG and the CUDA RNG of the tensors' devices now; restore them on ``with``.

    The outer RNG streams are left as they were after the block (``torch.random.fork_rng``), so a replay
    does not disturb the training's stream (GradCache's ``RandContext``).
    """

    def __init__(self, *tensors: Any) -> None:
        self.cpu_state = torch.get_rng_state()
        self.devices = sorted(
            {t.device.index or 0 for t in tensors if isinstance(t, Tensor) and t.device.type == "cuda"}
        )
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork: AbstractContextManager[Any] | None = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for device, state in zip(self.devices, self.cuda_states, strict=True):
            torch.cuda.set_rng_state(state, device)

    def __exit__(self, *exc: Any) -> None:
        assert self._fork is not None
        self._fork.__exit__(*exc)
        self._fork = None


def batch_rows(features: dict[str, Any]) -> int:
    """Rows in tokenised ``features`` (the first dimension of ``input_ids``, else of any tensor)."""
    ids = features.get("input_ids")
    if isinstance(ids, Tensor):
        return int(ids.shape[0])
    return next(int(v.shape[0]) for v in features.values() if isinstance(v, Tensor) and v.ndim > 0)


def minibatch(features: dict[str, Any], begin: int, end: int) -> dict[str, Any]:
    """Rows ``begin:end`` of padded ``features``; trailing columns that are padding in all of them are cut.

    Cutting keeps a mini-batch of short rows from paying the full batch's width (memory follows b); right
    padding only, so positions are unchanged and the rows' outputs are those of the full batch.
    """
    mask = features.get("attention_mask")
    width = cut = None
    if isinstance(mask, Tensor) and mask.ndim == 2:
        width = mask.shape[1]
        active = mask[begin:end].bool().any(dim=0)
        if active.any():
            cut = int(active.nonzero().max()) + 1
    out: dict[str, Any] = {}
    for key, value in features.items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            out[key] = value
        elif cut is not None and value.ndim >= 2 and value.shape[1] == width:
            out[key] = value[begin:end, :cut]
        else:
            out[key] = value[begin:end]
    return out


def chunk_ranges(rows: int, size: int) -> list[tuple[int, int]]:
    """``[(begin, end)]`` covering ``range(rows)`` in chunks of ``size`` (the last may be shorter)."""
    return [(begin, min(begin + size, rows)) for begin in range(0, rows, size)]


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


def all_gather_no_grad(tensor: Tensor) -> Tensor:
    """``(world·n, ...)`` concatenation of every rank's ``tensor`` (no autograd)."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


# A loss over rows: (global columns (N, d) each, global labels or None, offset of the local rows in the global
# batch, local query range begin:end, local row count n) -> named parts whose sum over the chunks of
# range(n) is the local loss.
RowsLoss = Callable[[list[Tensor], "Tensor | None", int, int, int, int], dict[str, Tensor]]


def loss_and_embedding_grads(
    rows_loss: RowsLoss, columns: list[Tensor], labels: Tensor | None, chunk: int, *, gather: bool
) -> tuple[dict[str, float], list[Tensor]]:
    """Step 2: the loss parts over all local rows and ``dL/dh`` ``(n, d)`` per column, ``chunk`` query rows at once.

    ``columns`` are the local embeddings (no graph). Under ``gather`` they are all-gathered once; each rank's
    ``dL/dh_global`` is summed over ranks (one all-reduce per column) and sliced to the local rows.
    """
    rank, world = rank_and_world() if gather else (0, 1)
    n = columns[0].shape[0]
    leaves = [(all_gather_no_grad(c) if gather else c).detach().requires_grad_() for c in columns]
    all_labels = None if labels is None else (all_gather_no_grad(labels) if gather else labels).detach()
    totals: dict[str, float] = {}
    for begin, end in chunk_ranges(n, chunk):
        parts = rows_loss(leaves, all_labels, rank * n, begin, end, n)
        sum(parts.values()).backward()  # type: ignore[union-attr]  # sum of tensors, not int
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + float(value.detach())
    grads = []
    for leaf in leaves:
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        if gather and world > 1:
            dist.all_reduce(grad)
        grads.append(grad[rank * n : (rank + 1) * n])
    return totals, grads


def _sync_context(model: nn.Module, sync: bool) -> AbstractContextManager[Any]:
    return model.no_sync() if isinstance(model, DistributedDataParallel) and not sync else nullcontext()


def replay_backward(
    forward: Callable[[dict[str, Any]], Tensor],
    model: nn.Module,
    features: list[dict[str, Any]],
    states: list[list[RandContext]],
    grads: list[Tensor],
    chunk: int,
    scale: float | Tensor = 1.0,
    extra: Callable[[int, int, int, Tensor], Tensor] | None = None,
) -> None:
    """Steps 3-4: re-run each mini-batch with its saved RNG state and back-propagate ``scale·<h, dL/dh>``.

    ``extra(column, begin, end, h)`` may add a per-row loss computed in the same pass (RoFormer-Sim's seq2seq
    share); it is back-propagated with the same ``scale``. DDP synchronises on the very last pass only.
    """
    passes = [(c, k, r) for c, f in enumerate(features) for k, r in enumerate(chunk_ranges(batch_rows(f), chunk))]
    for i, (c, k, (begin, end)) in enumerate(passes):
        # torch.enable_grad: the autograd engine runs hooks with grad mode off, and the replay needs its graph.
        with _sync_context(model, i == len(passes) - 1), states[c][k], torch.enable_grad():
            h = forward(minibatch(features[c], begin, end))
            surrogate = (h * grads[c][begin:end]).sum()
            if extra is not None:
                surrogate = surrogate + extra(c, begin, end, h)
            (surrogate * scale).backward()


def embed_without_grad(
    forward: Callable[[dict[str, Any]], Tensor], features: list[dict[str, Any]], chunk: int
) -> tuple[list[Tensor], list[list[RandContext]]]:
    """Step 1: every column's embeddings ``(n, d)`` without a graph and the RNG snapshot before each mini-batch."""
    columns, states = [], []
    for f in features:
        parts, snaps = [], []
        for begin, end in chunk_ranges(batch_rows(f), chunk):
            mb = minibatch(f, begin, end)
            snaps.append(RandContext(*mb.values()))
            with torch.no_grad():
                parts.append(forward(mb))
        columns.append(torch.cat(parts))
        states.append(snaps)
    return columns, states


def check_batch_sizes(batch_size: int, mini_batch_size: int | None, world_size: int = 1) -> int:
    """Validate B (global batch), b (mini-batch) and the number of processes; return the per-process batch.

    B must split evenly over processes (each holds B / world rows), and every process's rows must split
    into whole mini-batches: uneven chunks would still be exact, but equal shapes keep the replay and the
    memory bound simple and make a wrong setting visible instead of silently changing the cost.
    """
    check_batch_size(batch_size)
    if batch_size % world_size:
        raise SimtoolError(f"batch_size={batch_size} is not divisible by the {world_size} processes")
    local = batch_size // world_size
    if mini_batch_size is None:
        return local
    check_positive("mini_batch_size", mini_batch_size)
    if mini_batch_size > local:
        where = f" per process ({batch_size} over {world_size})" if world_size > 1 else ""
        raise SimtoolError(f"mini_batch_size={mini_batch_size} is larger than the batch of {local}{where}")
    if local % mini_batch_size:
        raise SimtoolError(f"batch_size={local} (per process) is not a multiple of mini_batch_size={mini_batch_size}")
    return local


class ExactCachedLossMixin:
    """The four-step cache for a loss module; every encoder pass (plain, cached, replayed) under one autocast.

    A subclass sets ``model`` (a SentenceTransformer, possibly DDP-wrapped), ``mini_batch_size`` and
    ``autocast_dtype`` (None = no autocast) and implements :meth:`rows_loss` and ``gather``. Embeddings come
    back float32. After every forward ``last_parts`` holds the named loss parts as floats (for the log).
    """

    model: nn.Module
    mini_batch_size: int | None = None
    autocast_dtype: torch.dtype | None = None
    last_parts: dict[str, float]

    @property
    def gather(self) -> bool:
        return rank_and_world()[1] > 1

    def rows_loss(
        self, columns: list[Tensor], labels: Tensor | None, offset: int, begin: int, end: int, n: int
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def autocast(self, device: torch.device) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """Sentence embeddings ``(n, d)`` float32 of tokenised ``features``, with gradients if enabled."""
        device = next(iter(v for v in features.values() if isinstance(v, Tensor))).device
        with self.autocast(device):
            embeddings = self.model(features)["sentence_embedding"]
        return embeddings.float()

    def embeddings_loss_parts(self, columns: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        """Named loss parts from full-batch local embeddings (one ``(n, d)`` per column), with autograd."""
        rank, _ = rank_and_world() if self.gather else (0, 1)
        n = columns[0].shape[0]
        every = [all_gather_with_grad(c) for c in columns] if self.gather else columns
        all_labels = None if labels is None else (all_gather_no_grad(labels) if self.gather else labels)
        parts = self.rows_loss(every, all_labels, rank * n, 0, n, n)
        self.last_parts = {k: float(v.detach()) for k, v in parts.items()}
        return parts

    def embeddings_loss(self, columns: list[Tensor], labels: Tensor | None = None) -> Tensor:
        """The summed loss from full-batch local embeddings."""
        return sum(self.embeddings_loss_parts(columns, labels).values())  # type: ignore[return-value]  # sum of tensors, not int

    def forward_cached(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        """The full-batch loss (a scalar whose ``backward()`` runs the replays) with memory of one mini-batch."""
        assert self.mini_batch_size is not None
        columns, states = embed_without_grad(self.embed, features, self.mini_batch_size)
        parts, grads = loss_and_embedding_grads(
            self.rows_loss, columns, labels, self.mini_batch_size, gather=self.gather
        )
        self.last_parts = parts
        value = torch.tensor(sum(parts.values()), device=columns[0].device)
        if not torch.is_grad_enabled():
            return value
        value.requires_grad_()

        def replay(grad_output: Tensor) -> None:
            replay_backward(self.embed, self.model, features, states, grads, self.mini_batch_size or 1, grad_output)

        value.register_hook(replay)
        return value


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
    rows = batch_rows(sentence_features[0])
    starts = list(range(0, rows, mini_batch_size))
    model = loss.model
    total = torch.zeros(())
    for k, begin in enumerate(starts):
        end = begin + mini_batch_size
        sync = k == len(starts) - 1
        context = model.no_sync() if isinstance(model, DistributedDataParallel) and not sync else nullcontext()
        with context:
            columns = [loss.embed(minibatch(f, begin, end)) for f in sentence_features]
            chunk_labels = None if labels is None else labels[begin:end]
            value = loss.embeddings_loss(columns, chunk_labels) / len(starts)
            (value * scale).backward()
        total = total + value.detach().cpu()
    return total


Probe = Callable[[Any, dict[str, Tensor]], Tensor]


def _sentence_embedding_probe(model: Any, features: dict[str, Tensor]) -> Tensor:
    return model(features)["sentence_embedding"].float().sum()


def freeze_unused_parameters(
    model: nn.Module, sample_features: dict[str, Tensor], probe: Probe | None = None
) -> list[str]:
    """Set ``requires_grad=False`` on parameters that never reach the loss; return their names.

    ``probe(model, features)`` is a scalar that reaches every parameter the loss trains (default: the sum of the
    sentence embeddings; roformer-sim adds its LM head's cross-entropy, which runs outside the forward).
    Needed before DDP (``find_unused_parameters=False``): e.g. BERT's pooler runs in the forward but the
    embedding does not use it, so it never gets a gradient and DDP would wait for it forever. Freezing
    changes nothing else: such parameters have no gradient, so the optimizer never updates them.
    """
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # keep the training RNG streams untouched
        model.zero_grad(set_to_none=True)
        (probe or _sentence_embedding_probe)(model, sample_features).backward()
    frozen = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and parameter.grad is None:
            parameter.requires_grad_(False)
            frozen.append(name)
    model.zero_grad(set_to_none=True)
    return frozen


def wrap_ddp(
    model: nn.Module, sample_features: dict[str, Tensor], probe: Probe | None = None
) -> DistributedDataParallel:
    """Wrap ``model`` for data-parallel training (process group already initialised, model on its device);
    ``probe``: see :func:`freeze_unused_parameters`."""
    freeze_unused_parameters(model, sample_features, probe)
    device = next(model.parameters()).device
    # BERT's buffers (position ids) are constants: no broadcast before every forward pass. torch 2.13
    # renamed the option; older versions only know broadcast_buffers.
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync_buffers: dict[str, Any] = {
        "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False
    }
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync_buffers
    )
