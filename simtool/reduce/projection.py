"""Johnson-Lindenstrauss random projection, through scikit-learn's random projections.

``gaussian``: entries i.i.d. N(0, 1/k), as in the article (kexue.fm/8706): ``y = A x``.
``sparse``: Achlioptas / Li et al. sparse entries ±sqrt(s/k) with density 1/s (scikit-learn's
default s = sqrt(d)); the same expected norms at a fraction of the multiply cost.
Both are data-independent: only the input dimension and the seed matter.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from simtool.errors import SimtoolError
from simtool.reduce.base import LinearReducer

Distribution = Literal["gaussian", "sparse"]


class RandomProjection(LinearReducer):
    """A seeded ``(d, k)`` random matrix; no bias. Normalises outputs unless ``normalize=False``."""

    kind: ClassVar[str] = "projection"
    config_keys: ClassVar[dict[str, str]] = {"distribution": "distribution", "seed": "seed"}

    def __init__(self, dim: int, distribution: Distribution = "gaussian", seed: int = 0, normalize: bool = True):
        if not isinstance(dim, int) or dim <= 0:
            raise SimtoolError(f"dim must be a positive integer, got {dim!r}")
        if distribution not in ("gaussian", "sparse"):
            raise SimtoolError(f"distribution must be 'gaussian' or 'sparse', got {distribution!r}")
        self.dim, self.distribution, self.seed, self.normalize = dim, distribution, seed, normalize
        self.source_fingerprint: str | None = None

    def fit(self, vectors_or_dim: np.ndarray | int, *, source_fingerprint: str | None = None) -> RandomProjection:
        """Draw the matrix for input dimension d (an int, or taken from an ``(n, d)`` array)."""
        from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

        d = vectors_or_dim if isinstance(vectors_or_dim, int) else int(np.shape(vectors_or_dim)[1])
        if self.dim > d:
            raise SimtoolError(f"dim={self.dim} is larger than the vectors' dimension {d}")
        cls = GaussianRandomProjection if self.distribution == "gaussian" else SparseRandomProjection
        # Only the shape of the data matters to the fit; the matrix depends on (d, k, seed) alone.
        proj = cls(n_components=self.dim, random_state=self.seed).fit(np.zeros((1, d), dtype=np.float32))
        components = proj.components_
        dense = components.toarray() if hasattr(components, "toarray") else np.asarray(components)
        self._set_affine(dense.T, None)  # sklearn computes x @ components_.T
        self.source_fingerprint = source_fingerprint
        return self

    @classmethod
    def _restore(cls, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> RandomProjection:
        obj = super()._restore(config, tensors)
        assert isinstance(obj, RandomProjection)
        obj.dim = obj.out_dim
        return obj
