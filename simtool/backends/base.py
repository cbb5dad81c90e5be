"""What every encode backend shares: the spec it registers, and token-length batching.

A backend turns a batch of tokenizer features into ``(b, d)`` float32 sentence vectors (a *runner*).
:func:`encode_sorted` tokenizes once, sorts by token count so that each batch pads to its own longest
text (sentence-transformers sorts by characters, which leaves ~23% padding tokens against ~2%), and
puts the vectors back in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

PREPROCESS_CHUNK = 4096  # texts tokenized together; bounds the padded id matrices to ~25 MB at 256 tokens


class Runner(Protocol):
    """Tokenizer features (torch tensors, padded to the batch's longest text) → ``(b, d)`` float32 vectors."""

    def __call__(self, features: dict[str, Any]) -> np.ndarray: ...


@dataclass
class Built:
    """A runner and what an index should record about it (``artifact``: hash of an exported file, if any)."""

    runner: Runner
    precision: str
    artifact: str | None = None
    exported: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend.

    ``tolerance``: the max ``1 - cos`` against fp32 torch that its tests hold it to on real sentences.
    ``extra``: the pip extra that provides it (``None``: always available).
    """

    name: str
    build: Callable[[SentenceTransformer, Path], Built]
    tolerance: float
    description: str
    extra: str | None = None
    modules: tuple[str, ...] = ()

    def available(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in self.modules)


def encode_sorted(
    model: SentenceTransformer, runner: Runner, texts: Sequence[str], batch_size: int, progress: bool = False
) -> np.ndarray:
    """Encode ``texts`` in batches of similar token count; ``(len(texts), d)`` float32 in input order."""
    from tqdm.auto import tqdm

    out: np.ndarray | None = None
    left = model.tokenizer.padding_side == "left"
    with tqdm(total=len(texts), desc="encode", unit="text", disable=not progress) as bar:
        for lo in range(0, len(texts), PREPROCESS_CHUNK):
            chunk = list(texts[lo : lo + PREPROCESS_CHUNK])
            features = model.preprocess(chunk)
            lengths = features["attention_mask"].sum(dim=1).numpy()
            # Longest first, as sentence-transformers does: an out-of-memory batch shows at once.
            order = np.argsort(-lengths, kind="stable")
            for start in range(0, len(chunk), batch_size):
                rows = order[start : start + batch_size]
                width = int(lengths[rows].max())
                cols = slice(-width, None) if left else slice(0, width)
                batch = {k: v[rows][:, cols] if _is_token_matrix(v) else v for k, v in features.items()}
                vectors = runner(batch)
                if out is None:
                    out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
                out[lo + rows] = vectors
                bar.update(len(rows))
    assert out is not None
    return out


def _is_token_matrix(v: Any) -> bool:
    return hasattr(v, "ndim") and v.ndim == 2


def numpy_inputs(features: dict[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The features a compiled graph takes, as int64 numpy arrays."""
    return {n: features[n].numpy().astype(np.int64, copy=False) for n in names if n in features}
