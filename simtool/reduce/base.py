"""Linear reducers: ``y = (x - center) @ weight``, optionally L2-normalised; saved as safetensors + JSON.

Whitening and random projection both fit this shape, so an index applies either one the
same way, and a reduced model is a stock sentence-transformers ``Dense`` + ``Normalize``.

Saving and loading go the way sentence-transformers modules do: a subclass names its ``kind`` and its
``config_keys`` (each JSON key and the attribute it is read from and restored to); defining the subclass
registers it by ``kind`` (``__init_subclass__``), and :func:`load_reducer` finds the class by the ``kind``
its file records. The subclasses shipped here are registered by importing :mod:`simtool.reduce`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from simtool.errors import SimtoolError

CHUNK_ROWS = 16_384  # rows per streamed chunk: 16k x 1024 dims x 8 bytes = 128 MB at most in float64


def iter_chunks(vectors: np.ndarray | Iterable[np.ndarray], rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """Yield ``(m, d)`` blocks of an array (a memmap is read block by block) or pass an iterable through."""
    if isinstance(vectors, np.ndarray):
        if vectors.ndim != 2:
            raise SimtoolError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
        for start in range(0, len(vectors), rows):
            yield vectors[start : start + rows]
    else:
        yield from vectors


def check_finite(chunk: np.ndarray, first_row: int) -> None:
    """Raise naming the first row (0-based, global) that holds NaN or inf."""
    bad = ~np.isfinite(chunk).all(axis=1)
    if bad.any():
        raise SimtoolError(f"vector row {first_row + int(np.argmax(bad))} contains NaN or inf")


REDUCERS: dict[str, type[LinearReducer]] = {}
"""Every reducer class by ``kind``, filled as each subclass is defined."""


class LinearReducer:
    """A fitted affine map ``(n, d) float32 -> (n, k) float32``, then L2 normalisation if ``normalize``.

    ``weight`` is ``(d, k)``; ``center`` ``(d,)`` or None is subtracted first, which keeps float32
    precise when the data sit far from the origin (``x @ W + b`` would cancel two large terms).
    ``source_fingerprint`` names the encoder whose vectors it was fitted on (None for a bare array).

    A subclass sets ``kind`` (its name in saved files) and ``config_keys``: ``{json key: attribute}``
    for its own parameters, saved after the base ones and restored to the attribute on load.
    """

    kind: ClassVar[str] = "linear"
    config_keys: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is None:
            return  # an intermediate class: saved files name concrete kinds only
        if kind in REDUCERS:
            raise TypeError(f"reducer kind {kind!r} is taken by {REDUCERS[kind].__qualname__}")
        REDUCERS[kind] = cls

    weight: np.ndarray
    center: np.ndarray | None
    normalize: bool
    source_fingerprint: str | None

    def _set_affine(self, weight: np.ndarray, center: np.ndarray | None) -> None:
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.center = None if center is None else np.ascontiguousarray(center, dtype=np.float32)

    @property
    def bias(self) -> np.ndarray | None:
        """The same map as ``x @ weight + bias`` (for a stock ``Dense`` layer): ``-center @ weight``, float32."""
        if self.center is None:
            return None
        return (-(self.center.astype(np.float64) @ self.weight.astype(np.float64))).astype(np.float32)

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "weight", None) is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise SimtoolError(f"this {type(self).__name__} is not fitted yet")

    @property
    def in_dim(self) -> int:
        self._require_fitted()
        return int(self.weight.shape[0])

    @property
    def out_dim(self) -> int:
        self._require_fitted()
        return int(self.weight.shape[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)`` -> ``(n, k)`` float32."""
        self._require_fitted()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise SimtoolError(f"{self.kind} expects vectors of dim {self.in_dim}, got shape {x.shape}")
        y = (x if self.center is None else x - self.center) @ self.weight
        if self.normalize:
            y /= np.clip(np.linalg.norm(y, axis=1, keepdims=True), 1e-12, None)
        return y

    def config(self) -> dict[str, Any]:
        """JSON-serialisable parameters (no arrays): the base keys, then ``config_keys``."""
        return {
            "kind": self.kind,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "normalize": self.normalize,
            "source_fingerprint": self.source_fingerprint,
            **{key: getattr(self, attr) for key, attr in self.config_keys.items()},
        }

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight}
        if self.center is not None:
            out["center"] = self.center
        return out

    def save(self, path: str | Path) -> None:
        """One safetensors file: the arrays, with the JSON config in its metadata."""
        save_file(self.tensors(), str(path), metadata={"simtool_reducer": json.dumps(self.config())})

    @classmethod
    def _restore(cls, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> LinearReducer:
        """A fitted reducer from a saved ``config`` and its tensors; a subclass derives what it does not save."""
        obj = cls.__new__(cls)
        obj._set_affine(tensors["weight"], tensors.get("center"))
        obj.normalize = bool(config["normalize"])
        obj.source_fingerprint = config.get("source_fingerprint")
        for key, attr in cls.config_keys.items():
            setattr(obj, attr, config[key])
        return obj


def load_reducer(path: str | Path) -> LinearReducer:
    """Read a reducer written by :meth:`LinearReducer.save` (safetensors: no pickle)."""
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if "simtool_reducer" not in meta:
        raise SimtoolError(f"{path}: not a simtool reducer file")
    config = json.loads(meta["simtool_reducer"])
    cls = REDUCERS.get(config.get("kind"))
    if cls is None:
        raise SimtoolError(f"{path}: unknown reducer kind {config.get('kind')!r}")
    return cls._restore(config, load_file(str(path)))


def apply_chain(reducers: Sequence[LinearReducer], x: np.ndarray) -> np.ndarray:
    for r in reducers:
        x = r.transform(x)
    return np.asarray(x, dtype=np.float32)
