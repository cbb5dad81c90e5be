"""In-batch contrastive losses for sentence encoders: SimCSE (unsupervised and supervised) with an AM-Softmax margin.

All losses are sentence-transformers loss modules (``forward(sentence_features, labels)``), so they work with
:class:`sentence_transformers.SentenceTransformerTrainer` as well as with :func:`simtool.training.train`.

The logits of anchor ``i`` against candidate ``j`` are (techniques.md §2.2, §6.1)::

    logits_ij = s · (cos(a_i, c_j) − m · [j = pos(i)])

with scale ``s`` (20 = 1/τ for τ = 0.05) and additive margin ``m`` on the positive only (AM-Softmax). The loss
is the mean over anchors of the softmax cross-entropy with target ``pos(i)``. Candidates are every positive in
the batch; in the supervised recipe also every hard negative, the row's own one weighted by ``α`` (its logit
gets ``+ log α``, SimCSE's ``hard_negative_weight``; α = 0 drops it). Options:

- ``symmetric``: also the reverse direction (positive ``i`` against all anchors), averaged with the forward one;
- ``same_view_negatives``: the other anchors join the denominator too (bojone's Chinese SimCSE: with
  ``symmetric`` this is his 2N-row formulation, each row against the other 2N − 1);
- ``distill_weight`` λ: adds :class:`CosineMatrixDistillationLoss`, ``λ · mean((cos(a_i, a_j) − cos(t_i, t_j))²)``
  (RoFormer-Sim, techniques.md §3.6, λ = 100), with teacher embeddings ``t`` passed as ``labels`` ``(B, d_t)``.

Every loss names its parts (``{"contrastive": ..., "distill": ...}``, :meth:`rows_loss`); ``last_parts`` holds
the latest as floats, which the training loop logs.

With ``mini_batch_size`` set the loss uses exact gradient caching (:mod:`simtool.grad_cache`): the gradients
are those of the full-batch loss, while activation memory follows the mini-batch. Under ``torch.distributed``
the embeddings are all-gathered (with gradient to the local slice), so every rank scores against all
negatives of the global batch and the averaged gradients are those of the single-process global batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from simtool.errors import ParameterError
from simtool.grad_cache import ExactCachedLossMixin, all_gather_with_grad, rank_and_world
from simtool.validate import check_non_negative, check_positive


def _positive_mask(rows: int, columns: int, offset: int, device: torch.device) -> Tensor:
    """``(rows, columns)`` bool, True at ``(i, offset + i)``: each query row's own column in the global batch."""
    mask = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    mask[torch.arange(rows, device=device), torch.arange(offset, offset + rows, device=device)] = True
    return mask


def _direction_loss_sum(
    queries: Tensor,
    positives: Tensor,
    extra: list[tuple[Tensor, str]],
    *,
    offset: int,
    scale: float,
    margin: float,
    hard_negative_weight: float,
) -> Tensor:
    """Summed CE of ``queries`` ``(q, d)`` (global rows ``offset:offset+q``) against ``positives`` ``(N, d)``.

    ``extra`` holds ``(candidates (N, d), kind)``; kind ``"hard"`` weights the row's own candidate by
    ``hard_negative_weight``, kind ``"self"`` removes it (the query itself). Inputs are L2-normalised.
    """
    q = queries.shape[0]
    own = _positive_mask(q, positives.shape[0], offset, queries.device)
    logits = [scale * (queries @ positives.T) - (scale * margin) * own]
    for candidates, kind in extra:
        block = scale * (queries @ candidates.T)
        if kind == "self" or hard_negative_weight == 0.0:
            block = block.masked_fill(own, -math.inf)
        elif hard_negative_weight != 1.0:
            block = block + math.log(hard_negative_weight) * own
        logits.append(block)
    target = torch.arange(offset, offset + q, device=queries.device)
    return F.cross_entropy(torch.cat(logits, dim=1), target, reduction="sum")


def contrastive_rows_loss(
    all_anchors: Tensor,
    all_positives: Tensor,
    all_negatives: Tensor | None,
    *,
    offset: int,
    begin: int,
    end: int,
    n: int,
    scale: float = 20.0,
    margin: float = 0.0,
    hard_negative_weight: float = 1.0,
    symmetric: bool = False,
    same_view_negatives: bool = False,
) -> Tensor:
    """The terms of local query rows ``begin:end`` of the contrastive loss, divided by the local row count ``n``.

    Columns are global ``(N, d)``, L2-normalised; the local rows are ``offset:offset+n``. Summed over chunks
    of ``range(n)`` this is the mean loss over the local rows: step 2 of the cache in row chunks.
    """
    lo, hi = offset + begin, offset + end
    hyper: dict[str, Any] = {
        "offset": lo,
        "scale": scale,
        "margin": margin,
        "hard_negative_weight": hard_negative_weight,
    }
    extra: list[tuple[Tensor, str]] = []
    if all_negatives is not None:
        extra.append((all_negatives, "hard"))
    if same_view_negatives:
        extra.append((all_anchors, "self"))
    loss = _direction_loss_sum(all_anchors[lo:hi], all_positives, extra, **hyper)
    if symmetric:
        reverse_extra = [(all_positives, "self")] if same_view_negatives else []
        loss = (loss + _direction_loss_sum(all_positives[lo:hi], all_anchors, reverse_extra, **hyper)) / 2
    return loss / n


def cosine_matrix_distillation_rows(
    all_student: Tensor, all_teacher: Tensor, *, offset: int, begin: int, end: int, n: int
) -> Tensor:
    """Rows ``begin:end`` of ``mean_ij (cos(s_i, s_j) − cos(t_i, t_j))²`` over local i and global j (§3.6).

    ``all_student`` ``(N, d)`` is L2-normalised; ``all_teacher`` ``(N, d_t)`` raw (normalised here, no gradient).
    """
    teacher = F.normalize(all_teacher.detach().to(all_student.device, torch.float32), dim=-1)
    lo, hi = offset + begin, offset + end
    diff = all_student[lo:hi] @ all_student.T - teacher[lo:hi] @ teacher.T
    return (diff**2).sum() / (n * all_student.shape[0])


class CosineMatrixDistillationLoss(nn.Module):
    """RoFormer-Sim's distillation (techniques.md §3.6): ``λ · mean((S̃S̃ᵀ − T̃T̃ᵀ)²)`` over the batch.

    ``forward(student (N, d), teacher (N, d_t))`` returns ``{"distill": scalar}``; the student gets the
    gradient, the teacher none. ``rows`` restricts the query rows (cached step 2, see :mod:`simtool.grad_cache`).
    """

    def __init__(self, weight: float = 100.0) -> None:
        super().__init__()
        check_non_negative("distill_weight", weight)
        self.weight = float(weight)

    def forward(
        self, student: Tensor, teacher: Tensor, *, offset: int = 0, rows: tuple[int, int] | None = None, n: int = 0
    ) -> dict[str, Tensor]:
        student = F.normalize(student.float(), dim=-1)
        n = n or student.shape[0]
        begin, end = rows or (0, n)
        rows_loss = cosine_matrix_distillation_rows(student, teacher, offset=offset, begin=begin, end=end, n=n)
        return {"distill": self.weight * rows_loss}


def in_batch_contrastive_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    scale: float = 20.0,
    margin: float = 0.0,
    hard_negative_weight: float = 1.0,
    symmetric: bool = False,
    same_view_negatives: bool = False,
    teacher: Tensor | None = None,
    distill_weight: float = 0.0,
    gather: bool = False,
) -> Tensor:
    """The loss of this module from the local embeddings ``(n, d)`` of each column; returns a scalar.

    ``teacher`` ``(n, d_t)`` are teacher embeddings of the anchors (distillation when ``distill_weight > 0``).
    With ``gather`` (torch.distributed initialised, equal ``n`` on every rank) candidates come from all ranks
    and row ``i`` of this rank is row ``rank · n + i`` of the global batch.
    """
    from simtool.grad_cache import all_gather_no_grad

    columns = [F.normalize(c.float(), dim=-1) for c in (anchors, positives, negatives) if c is not None]
    rank, _ = rank_and_world() if gather else (0, 1)
    n = anchors.shape[0]
    every = [all_gather_with_grad(c) for c in columns] if gather else columns
    loss = contrastive_rows_loss(
        every[0],
        every[1],
        every[2] if len(every) == 3 else None,
        offset=rank * n,
        begin=0,
        end=n,
        n=n,
        scale=scale,
        margin=margin,
        hard_negative_weight=hard_negative_weight,
        symmetric=symmetric,
        same_view_negatives=same_view_negatives,
    )
    if distill_weight > 0.0:
        if teacher is None:
            raise ParameterError("distillation needs teacher embeddings of the anchors (pass them as labels)")
        all_teacher = all_gather_no_grad(teacher) if gather else teacher
        loss = loss + distill_weight * cosine_matrix_distillation_rows(
            every[0], all_teacher, offset=rank * n, begin=0, end=n, n=n
        )
    return loss


def _check_loss_settings(scale: float, distill_weight: float, mini_batch_size: int | None) -> None:
    check_positive("scale", scale)
    check_non_negative("distill_weight", distill_weight)
    if mini_batch_size is not None:
        check_positive("mini_batch_size", mini_batch_size)


class InBatchContrastiveLoss(ExactCachedLossMixin, nn.Module):
    """In-batch softmax contrastive loss with scale and AM-Softmax margin (see the module docstring).

    Input columns: ``(anchor, positive)`` or ``(anchor, positive, hard_negative)``; with
    ``duplicate_single_column`` one column is embedded twice (unsupervised SimCSE). ``labels``: teacher
    embeddings ``(B, d_t)`` when ``distill_weight > 0``, else ignored. ``mini_batch_size``: None computes
    the batch in one pass; an int caches gradients (exact, memory of one mini-batch). ``autocast_dtype``
    (``torch.bfloat16``/``torch.float16``) runs the encoder under autocast in every pass; the loss itself
    is computed in float32. ``gather_across_devices`` defaults to "torch.distributed is initialised".
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        scale: float = 20.0,
        margin: float = 0.0,
        hard_negative_weight: float = 1.0,
        symmetric: bool = False,
        same_view_negatives: bool = False,
        distill_weight: float = 0.0,
        mini_batch_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        gather_across_devices: bool | None = None,
        duplicate_single_column: bool = False,
    ) -> None:
        super().__init__()
        _check_loss_settings(scale, distill_weight, mini_batch_size)
        check_non_negative("hard_negative_weight", hard_negative_weight)
        self.model = model
        self.scale = float(scale)
        self.margin = float(margin)
        self.hard_negative_weight = float(hard_negative_weight)
        self.symmetric = symmetric
        self.same_view_negatives = same_view_negatives
        self.distill_weight = float(distill_weight)
        self.distill = CosineMatrixDistillationLoss(distill_weight) if distill_weight > 0 else None
        self.mini_batch_size = mini_batch_size
        self.autocast_dtype = autocast_dtype
        self.gather_across_devices = gather_across_devices
        self.duplicate_single_column = duplicate_single_column

    @property
    def gather(self) -> bool:
        if self.gather_across_devices is not None:
            return self.gather_across_devices
        return rank_and_world()[1] > 1

    def rows_loss(
        self, columns: list[Tensor], labels: Tensor | None, offset: int, begin: int, end: int, n: int
    ) -> dict[str, Tensor]:
        """Named parts ``{"contrastive"[, "distill"]}`` of local query rows ``begin:end`` (global columns)."""
        if len(columns) not in (2, 3):
            raise ParameterError(f"{type(self).__name__} expects 2 or 3 input columns, got {len(columns)}")
        normed = [F.normalize(c.float(), dim=-1) for c in columns]
        parts = {
            "contrastive": contrastive_rows_loss(
                normed[0],
                normed[1],
                normed[2] if len(normed) == 3 else None,
                offset=offset,
                begin=begin,
                end=end,
                n=n,
                scale=self.scale,
                margin=self.margin,
                hard_negative_weight=self.hard_negative_weight,
                symmetric=self.symmetric,
                same_view_negatives=self.same_view_negatives,
            )
        }
        if self.distill is not None:
            if labels is None:
                raise ParameterError("distillation needs teacher embeddings of the anchors (pass them as labels)")
            parts.update(self.distill(normed[0], labels, offset=offset, rows=(begin, end), n=n))
        return parts

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        if self.duplicate_single_column and len(features) == 1:
            # The same inputs embedded twice: the two passes draw different dropout masks (SimCSE).
            features = [features[0], features[0]]
        if self.mini_batch_size is not None:
            return self.forward_cached(features, labels)
        columns = [self.embed(f) for f in features]
        return self.embeddings_loss(columns, labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "margin": self.margin,
            "hard_negative_weight": self.hard_negative_weight,
            "symmetric": self.symmetric,
            "same_view_negatives": self.same_view_negatives,
            "distill_weight": self.distill_weight,
            "mini_batch_size": self.mini_batch_size,
        }

    @property
    def citation(self) -> str:
        return """
@inproceedings{gao2021simcse,
    title={{SimCSE}: Simple Contrastive Learning of Sentence Embeddings},
    author={Gao, Tianyu and Yao, Xingcheng and Chen, Danqi},
    booktitle={EMNLP},
    year={2021}
}
"""


class UnsupSimCSELoss(InBatchContrastiveLoss):
    """Unsupervised SimCSE: one column of sentences, each embedded twice; dropout is the only augmentation.

    Row i's positive is its own second view; every other sentence's second view is a negative.
    """

    def __init__(self, model: SentenceTransformer, **kwargs: Any) -> None:
        super().__init__(model, duplicate_single_column=True, **kwargs)


class SupSimCSELoss(InBatchContrastiveLoss):
    """Supervised SimCSE: ``(anchor, entailment, contradiction)`` triplets; contradictions are hard negatives.

    ``hard_negative_weight`` is the paper's α (Table 7: 1 is best).
    """


def partner_contrastive_rows_loss(
    all_vectors: Tensor, *, offset: int, begin: int, end: int, n: int, scale: float = 20.0, margin: float = 0.0
) -> Tensor:
    """SimBERT's in-batch loss for local query rows ``begin:end``, divided by the local row count ``n``.

    One column ``(N, d)`` (L2-normalised) whose rows 2k and 2k+1 are a pair: row i's target is row ``i XOR 1``,
    its own column is masked out (the ``− 1e12·I`` of techniques.md §3.2), every other row is a negative; the
    AM-Softmax margin ``m`` is subtracted from the partner's cosine. Rows are global ``offset + i``.
    """
    lo, hi = offset + begin, offset + end
    rows = torch.arange(lo, hi, device=all_vectors.device)
    logits = scale * (all_vectors[lo:hi] @ all_vectors.T)
    own = _positive_mask(hi - lo, all_vectors.shape[0], lo, all_vectors.device)
    logits = logits.masked_fill(own, -math.inf)
    partner = rows ^ 1
    if margin:
        logits[torch.arange(hi - lo, device=logits.device), partner] -= scale * margin
    return F.cross_entropy(logits, partner, reduction="sum") / n


class RoFormerSimLoss(ExactCachedLossMixin, nn.Module):
    """RoFormer-Sim (techniques.md §3.2, §3.6): ``{"seq2seq", "contrastive"[, "distill"]}`` on one column of rows.

    Input: one features dict of UniLM rows (:func:`simtool.roformer_sim.pair_features`: pairs as adjacent rows
    ``[CLS] A [SEP] B [SEP]`` / ``[CLS] B [SEP] A [SEP]``). ``seq2seq``: token cross-entropy on B and its final
    [SEP], averaged over the batch's target tokens; ``contrastive``: :func:`partner_contrastive_rows_loss` on
    the [CLS] vectors (scale 20, optional margin); ``distill`` (``distill_weight`` λ > 0, teacher embeddings of
    each row's clean source as ``labels``): :class:`CosineMatrixDistillationLoss`.

    ``mini_batch_size`` b: exact gradient caching. Step 1 embeds each mini-batch without a graph and sums its
    seq2seq cross-entropy; step 2 computes the contrastive parts and ∂L/∂h over the whole batch; each replay
    back-propagates ``<h, ∂L/∂h>`` plus its rows' share of the seq2seq loss (summed CE / all target tokens), so
    the gradients equal the full batch's.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        scale: float = 20.0,
        margin: float = 0.0,
        distill_weight: float = 0.0,
        mini_batch_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        gather_across_devices: bool | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        _check_loss_settings(scale, distill_weight, mini_batch_size)
        self.model = model
        self.scale, self.margin = float(scale), float(margin)
        self.distill_weight = float(distill_weight)
        self.distill = CosineMatrixDistillationLoss(distill_weight) if distill_weight > 0 else None
        self.mini_batch_size = mini_batch_size
        self.autocast_dtype = autocast_dtype
        self.gather_across_devices = gather_across_devices
        self._tokens: Tensor | None = None

    @property
    def gather(self) -> bool:
        if self.gather_across_devices is not None:
            return self.gather_across_devices
        return rank_and_world()[1] > 1

    def _st(self) -> Any:
        return getattr(self.model, "module", self.model)  # under DDP the stack is the wrapped module

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """[CLS] vectors ``(n, d)`` float32; the token states of the same pass are kept for the seq2seq part."""
        device = features["input_ids"].device
        with self.autocast(device):
            out = self.model(features)
        self._tokens = out["token_embeddings"]
        return out["sentence_embedding"].float()

    def _seq2seq_sum(self, features: dict[str, Tensor]) -> tuple[Tensor, int]:
        from simtool.roformer_sim import seq2seq_token_loss

        assert self._tokens is not None
        with self.autocast(features["input_ids"].device):
            return seq2seq_token_loss(self._st(), features, self._tokens)

    def rows_loss(
        self, columns: list[Tensor], labels: Tensor | None, offset: int, begin: int, end: int, n: int
    ) -> dict[str, Tensor]:
        """Named parts ``{"contrastive"[, "distill"]}`` of local query rows ``begin:end`` (global column)."""
        if len(columns) != 1:
            raise ParameterError(f"{type(self).__name__} expects 1 input column of UniLM rows, got {len(columns)}")
        normed = F.normalize(columns[0].float(), dim=-1)
        parts = {
            "contrastive": partner_contrastive_rows_loss(
                normed, offset=offset, begin=begin, end=end, n=n, scale=self.scale, margin=self.margin
            )
        }
        if self.distill is not None:
            if labels is None:
                raise ParameterError("distillation needs teacher embeddings of the sources (pass them as labels)")
            parts.update(self.distill(normed, labels, offset=offset, rows=(begin, end), n=n))
        return parts

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features = list(sentence_features)
        if len(features) != 1:
            raise ParameterError(f"{type(self).__name__} expects 1 input column of UniLM rows, got {len(features)}")
        if self.mini_batch_size is not None:
            return self._forward_cached(features[0], labels)
        vectors = self.embed(features[0])
        ce, count = self._seq2seq_sum(features[0])
        ce_global, per_rank = self._global_tokens(float(ce.detach()), count, ce.device)
        parts = {"seq2seq": ce / per_rank, **self.embeddings_loss_parts([vectors], labels)}
        self.last_parts = {k: float(v.detach()) for k, v in parts.items()}
        self.last_parts["seq2seq"] = ce_global
        return sum(parts.values())  # type: ignore[return-value]

    def _global_tokens(self, ce_sum: float, count: int, device: torch.device) -> tuple[float, float]:
        """``(mean CE over the global batch's target tokens, global tokens / world)``.

        Ranks hold different numbers of target tokens, and DDP averages gradients over ranks; dividing each
        rank's summed CE by ``N_global / world`` makes that average the gradient of the global token mean
        (one all-reduce of two scalars). Without a process group: ``(ce_sum / count, count)``.
        """
        world = rank_and_world()[1] if self.gather else 1
        if world == 1:
            return ce_sum / max(count, 1), float(max(count, 1))
        totals = torch.tensor([ce_sum, float(count)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        tokens = max(float(totals[1]), 1.0)
        return float(totals[0]) / tokens, tokens / world

    def _forward_cached(self, features: dict[str, Tensor], labels: Tensor | None) -> Tensor:
        from simtool.grad_cache import (
            RandContext,
            chunk_ranges,
            loss_and_embedding_grads,
            minibatch,
            replay_backward,
        )

        b = self.mini_batch_size
        assert b is not None
        vectors, states, ce_total, count = [], [], 0.0, 0
        for begin, end in chunk_ranges(int(features["input_ids"].shape[0]), b):
            mb = minibatch(features, begin, end)
            states.append(RandContext(*mb.values()))
            with torch.no_grad():
                vectors.append(self.embed(mb))
                ce, k = self._seq2seq_sum(mb)
            ce_total, count = ce_total + float(ce), count + k
        parts, grads = loss_and_embedding_grads(self.rows_loss, [torch.cat(vectors)], labels, b, gather=self.gather)
        ce_mean, tokens_total = self._global_tokens(ce_total, count, vectors[0].device)
        parts = {"seq2seq": ce_mean, **parts}
        self.last_parts = parts
        self._tokens = None
        value = torch.tensor(sum(parts.values()), device=vectors[0].device)
        if not torch.is_grad_enabled():
            return value
        value.requires_grad_()

        def seq2seq_share(column: int, begin: int, end: int, h: Tensor) -> Tensor:
            ce, _ = self._seq2seq_sum(minibatch(features, begin, end))
            return ce / tokens_total

        def replay(grad_output: Tensor) -> None:
            replay_backward(self.embed, self.model, [features], [states], grads, b, grad_output, seq2seq_share)

        value.register_hook(replay)
        return value

    def get_config_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "margin": self.margin,
            "distill_weight": self.distill_weight,
            "mini_batch_size": self.mini_batch_size,
        }
