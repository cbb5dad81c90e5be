"""Hierarchical decomposition of trained absolute position embeddings (techniques.md §7.1).

A BERT-style encoder has ``n`` trained position vectors ``p_0..p_{n-1}`` (0-based). For
``m > n`` positions (up to ``n²``) the extension is

    u_i = (p_i − α p_0) / (1 − α),      q_{i·n + j} = α u_i + (1 − α) u_j,

so ``q_k = p_k`` for ``k < n``: every text that fitted before is encoded exactly as before.
:func:`extend_positions` writes a *new* model directory whose config says
``max_position_embeddings = m``, so plain transformers / sentence-transformers load it without
simtool, and an index manifest can fingerprint it like any other model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from simtool.errors import SimtoolError

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.4

# Models whose position information is rotary or relative: nothing to extend.
_NOT_ABSOLUTE_TYPES = frozenset(
    {"roformer", "deberta", "deberta-v2", "t5", "mt5", "xlnet", "transfo-xl", "llama", "mistral", "qwen2", "modernbert"}
)
# RoBERTa-family position ids start after the padding index, so rows [0, offset) are not positions.
_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "longformer", "mpnet", "data2vec-text"})


class PositionsNotExtendable(SimtoolError):
    """The model uses rotary/relative positions (or none we recognise), so extension does not apply."""


def hierarchical_positions(p: np.ndarray, length: int, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Extend trained positions ``p`` ``(n, d)`` to ``(length, d)`` by the hierarchical formula.

    Computed in float64 and cast to ``p``'s dtype; rows ``< n`` are copied from ``p`` unchanged
    (the formula gives them analytically, this keeps them bit for bit).
    """
    if not 0.0 < alpha < 1.0 or alpha == 0.5:
        raise SimtoolError(f"alpha must be in (0, 1) and not 0.5, got {alpha}")
    n = p.shape[0]
    if length <= 0 or length > n * n:
        raise SimtoolError(f"length must be in 1..{n * n} (n² for n={n} trained positions), got {length}")
    p64 = p.astype(np.float64)
    u = (p64 - alpha * p64[0]) / (1.0 - alpha)
    k = np.arange(length)
    q = alpha * u[k // n] + (1.0 - alpha) * u[k % n]
    out = q.astype(p.dtype)
    out[: min(n, length)] = p[: min(n, length)]
    return out


def _position_layout(config: Any) -> tuple[int, int]:
    """``(offset, trained positions)`` of an absolute-position config; raises when not absolute."""
    model_type = getattr(config, "model_type", "")
    kind = getattr(config, "position_embedding_type", "absolute")
    if model_type in _NOT_ABSOLUTE_TYPES or kind not in (None, "absolute"):
        raise PositionsNotExtendable(
            f"model type {model_type!r} uses {kind if kind not in (None, 'absolute') else 'rotary/relative'} "
            "positions: it needs no position extension; encode long texts with it directly or chunk them"
        )
    offset = int(config.pad_token_id) + 1 if model_type in _OFFSET_TYPES else 0
    return offset, int(config.max_position_embeddings) - offset


def max_positions(model: Any) -> int | None:
    """Token positions the encoder's transformer can take (``None`` when it has no absolute limit)."""
    try:
        config = model[0].auto_model.config
        _offset, n = _position_layout(config)
    except (PositionsNotExtendable, AttributeError, TypeError, IndexError, KeyError):
        return None
    return n


def check_max_seq_length(model: Any, max_seq_length: int | None, source: str) -> None:
    """Refuse ``max_seq_length`` beyond the trained positions, saying how to extend the model.

    Called from :func:`simtool.encoder.load_encoder`; past the table a BERT would fail deep
    inside the forward pass with an index error.
    """
    if max_seq_length is None:
        return
    limit = max_positions(model)
    if limit is not None and max_seq_length > limit:
        raise SimtoolError(
            f"max_seq_length={max_seq_length} exceeds the {limit} positions of model {source!r}; it needs an "
            f"extended model: `simtool extend-positions --model {source} --max-length {max_seq_length} --output DIR` "
            "(or simtool.positions.extend_positions), then load DIR"
        )


def extend_model(model: Any, max_length: int, alpha: float = DEFAULT_ALPHA) -> Any:
    """Extend a loaded sentence-transformers model in place to ``max_length`` positions; returns it."""
    import torch

    transformer = model[0]
    auto = transformer.auto_model
    config = auto.config
    offset, n = _position_layout(config)
    embeddings: Any = getattr(auto, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, torch.nn.Embedding):
        raise PositionsNotExtendable(f"model type {config.model_type!r} has no absolute position table to extend")
    if max_length <= n:
        raise SimtoolError(f"max_length must exceed the model's {n} trained positions, got {max_length}")
    weight = table.weight.detach().cpu().numpy()
    extended = hierarchical_positions(weight[offset:], max_length, alpha)
    full = np.concatenate([weight[:offset], extended]) if offset else extended
    new_table = torch.nn.Embedding(full.shape[0], full.shape[1], padding_idx=table.padding_idx)
    with torch.no_grad():
        new_table.weight.copy_(torch.from_numpy(full))
    new_table.to(table.weight.device)
    embeddings.position_embeddings = new_table
    total = offset + max_length
    device = table.weight.device
    for name, make in (
        ("position_ids", lambda: torch.arange(total, device=device).expand((1, -1))),
        ("token_type_ids", lambda: torch.zeros((1, total), dtype=torch.long, device=device)),
    ):
        if name in getattr(embeddings, "_buffers", {}):
            embeddings.register_buffer(name, make(), persistent=False)
    config.max_position_embeddings = total
    tokenizer = transformer.tokenizer
    tokenizer.model_max_length = max_length
    if hasattr(tokenizer, "init_kwargs"):
        tokenizer.init_kwargs["model_max_length"] = max_length
    model.max_seq_length = max_length
    return model


def extend_positions(
    model: str | os.PathLike[str] | None,
    max_length: int,
    output: str | os.PathLike[str],
    alpha: float = DEFAULT_ALPHA,
) -> Path:
    """Write ``output``: the sentence-transformers model ``model`` with ``max_length`` positions.

    Raises :class:`PositionsNotExtendable` for rotary/relative models. The directory is built
    aside and moved into place in one step, so a crash leaves no half-written model.
    """
    from simtool.atomic import atomic_dir
    from simtool.encoder import load_encoder

    out = Path(output)
    if out.exists() and any(out.iterdir()) and not (out / "modules.json").exists():
        raise SimtoolError(f"output {str(out)!r} exists and is not a model directory; refusing to replace it")
    encoder = load_encoder(model, device="cpu")
    extend_model(encoder, max_length, alpha)
    with atomic_dir(out) as staging:
        encoder.save(str(staging))
    log.info("wrote %s: %d positions (alpha %.3g)", out, max_length, alpha)
    return out
