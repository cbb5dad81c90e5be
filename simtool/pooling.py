"""Pooling over several transformer layers, as a sentence-transformers module that saves and loads itself.

``first-last-avg`` (BERT-whitening's default) averages, per token, the output of
transformer block 1 and of the last block, then takes the masked mean over tokens.
Index 0 of ``hidden_states`` is the embedding layer, so block 1 is index 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sentence_transformers.sentence_transformer.modules import Module

from simtool.errors import SimtoolError


class LayerPooling(Module):
    """Masked mean over tokens of the mean of the chosen layers' outputs.

    Needs ``all_layer_embeddings`` from the Transformer module (``output_hidden_states=True``).
    Output: ``sentence_embedding`` of shape ``(batch, embedding_dimension)``.
    """

    # per class, as in sentence-transformers, whose Module annotates it without ClassVar
    config_keys: ClassVar[list[str]] = ["embedding_dimension", "layers"]  # type: ignore[misc]  # see above

    def __init__(self, embedding_dimension: int, layers: list[int] | tuple[int, ...] = (1, -1)) -> None:
        super().__init__()
        self.embedding_dimension = embedding_dimension
        self.layers = [int(i) for i in layers]

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        hidden = features.get("all_layer_embeddings")
        if hidden is None:
            raise SimtoolError("LayerPooling needs hidden states: set output_hidden_states=True on the transformer")
        tokens = torch.stack([hidden[i] for i in self.layers]).mean(dim=0)
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * mask).sum(dim=1)
        features["sentence_embedding"] = summed / mask.sum(dim=1).clamp(min=1e-9)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)


# --- The fast path: the same pooling and post-pooling layers as pure numpy functions -----------------------------
#
# Backends other than torch return token embeddings as numpy arrays; the modules that follow the transformer
# are re-expressed here so every backend shares one float32 implementation. Each sentence-transformers module
# type maps to a builder (one registration per module type); ``fast_path`` checks a model's stack once.

TokenPool = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (b, t, h) float32, (b, t) mask -> (b, d) float32
VectorStep = Callable[[np.ndarray], np.ndarray]  # (b, d) float32 -> (b, d') float32


def _mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (tokens * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def _mean_sqrt_len(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (tokens * m).sum(axis=1) / np.sqrt(np.maximum(m.sum(axis=1), 1e-9))


def _cls(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # The first attended token, as sentence-transformers does, so left padding would also be right.
    first = mask.astype(np.int32).argmax(axis=1)
    return tokens[np.arange(len(tokens)), first]


def _max(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None].astype(bool), tokens, -np.inf).max(axis=1).astype(np.float32)


def _last_token(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    seq_len = mask.shape[1]
    flipped = mask[:, ::-1].astype(np.int32)
    idx = np.where(flipped.max(axis=1) == 0, seq_len - 1, flipped.argmax(axis=1))
    last = seq_len - idx - 1
    return tokens[np.arange(len(tokens)), last] * mask[np.arange(len(tokens)), last][:, None].astype(np.float32)


POOL_MODES: dict[str, TokenPool] = {
    "mean": _mean,
    "cls": _cls,
    "max": _max,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "lasttoken": _last_token,
}

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Identity": lambda x: x,
    "Tanh": np.tanh,
    "ReLU": lambda x: np.maximum(x, 0),
}


def normalize(x: np.ndarray) -> np.ndarray:
    """Row L2 normalisation with torch's ``F.normalize`` epsilon (1e-12)."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class FastPath:
    """What a backend must produce and what follows it.

    ``layers``: hidden-state indices whose per-token mean is the token input of ``pool`` (``None``: last layer).
    """

    layers: tuple[int, ...] | None
    pool: TokenPool
    steps: tuple[VectorStep, ...]

    def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(b, t, h)`` token embeddings and ``(b, t)`` mask → ``(b, d)`` float32 sentence vectors."""
        x = self.pool(tokens.astype(np.float32, copy=False), mask)
        for step in self.steps:
            x = step(x)
        return np.ascontiguousarray(x, dtype=np.float32)


def _pooling_step(module: Any) -> TokenPool:
    modes = (module.pooling_mode,) if isinstance(module.pooling_mode, str) else tuple(module.pooling_mode)
    unknown = [m for m in modes if m not in POOL_MODES]
    if unknown:
        raise SimtoolError(f"pooling mode {unknown[0]!r} has no fast path; load the model with backend='torch'")
    fns = [POOL_MODES[m] for m in modes]
    if len(fns) == 1:
        return fns[0]
    return lambda tokens, mask: np.concatenate([f(tokens, mask) for f in fns], axis=-1)


def _dense_step(module: Any) -> VectorStep:
    act_name = type(module.activation_function).__name__
    if act_name not in ACTIVATIONS:
        raise SimtoolError(f"Dense activation {act_name!r} has no fast path; load the model with backend='torch'")
    act = ACTIVATIONS[act_name]
    w = module.linear.weight.detach().to("cpu", torch.float32).numpy().T.copy()
    b = None if module.linear.bias is None else module.linear.bias.detach().to("cpu", torch.float32).numpy().copy()
    if getattr(module, "use_residual", False) and module.in_features != module.out_features:
        raise SimtoolError("a Dense layer with a projected residual has no fast path; use backend='torch'")
    residual = bool(getattr(module, "use_residual", False))

    def step(x: np.ndarray) -> np.ndarray:
        y = act(x @ w if b is None else x @ w + b)
        return y + x if residual else y

    return step


def fast_path(modules: Sequence[Any]) -> FastPath:
    """The fast path of a sentence-transformers module stack ``[Transformer, pooling, Dense/Normalize...]``.

    Raises ``SimtoolError`` naming the first module without a pure equivalent.
    """
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    rest = list(modules)[1:]
    if not rest or not isinstance(rest[0], (Pooling, LayerPooling)):
        raise SimtoolError("the model has no pooling module after its transformer; load it with backend='torch'")
    first = rest[0]
    layers: tuple[int, ...] | None
    pool: Callable[[np.ndarray, np.ndarray], np.ndarray]
    if isinstance(first, LayerPooling):
        layers, pool = tuple(first.layers), _mean
    else:
        layers, pool = None, _pooling_step(first)
    builders: dict[type, Callable[[Any], VectorStep]] = {Normalize: lambda _m: normalize, Dense: _dense_step}
    steps: list[VectorStep] = []
    for module in rest[1:]:
        build = builders.get(type(module))
        if build is None:
            raise SimtoolError(f"module {type(module).__name__} has no fast path; load the model with backend='torch'")
        steps.append(build(module))
    return FastPath(layers=layers, pool=pool, steps=tuple(steps))
