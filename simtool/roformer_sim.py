"""RoFormer-Sim (SimBERTv2, techniques.md §3) building blocks: the UniLM attention mask.

Only the mask is here so far; the model, the ``roformer-sim`` recipe and generation are not built yet.
"""

from __future__ import annotations

import torch
from torch import Tensor


def unilm_mask(segment_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``(n, L, L)`` bool: query i may attend key j iff ``idx_j <= idx_i`` (idx = cumsum(segment_ids)) and j is
    not padding (bert4keras ``UniLM_Mask``). Segment 0 (``[CLS] A [SEP]``) is bidirectional within itself,
    segment 1 (``B [SEP]``) sees all of segment 0 and itself causally, so [CLS] encodes A only.

    ``segment_ids``, ``attention_mask``: ``(n, L)`` ints (1 = real token).
    """
    idx = torch.cumsum(segment_ids, dim=1)
    allowed = idx[:, None, :] <= idx[:, :, None]
    return allowed & attention_mask.bool()[:, None, :]


def unilm_attention_bias(segment_ids: Tensor, attention_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(n, 1, L, L)`` additive bias (0 where allowed, the dtype's minimum elsewhere) for a transformers encoder.

    An additive float mask, not a bool one: transformers 5's eager attention (RoFormer) misreads 4-D bool masks.
    """
    allowed = unilm_mask(segment_ids, attention_mask)[:, None]
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
