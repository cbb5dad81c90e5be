"""BERT-whitening (Su et al. 2021), with partial whitening power and optional dev-set tuning.

With μ and Σ the mean and covariance of the fitting vectors and Σ = U Λ Uᵀ (eigenvalues
descending), the transform is ``y = (x - μ) W`` with ``W = U diag((λ + eps)^-p)[:, :k]``.
``p = 0.5`` is classic whitening (output covariance I), ``p = 0`` PCA rotation + centring.
Already-trained sentence encoders lose quality at 0.5; p around 0.1 keeps or improves it,
hence ``power="auto"``, which picks p (and optionally k) on an STS dev set.

Σ divides by n (not n - 1): the maximum-likelihood estimate, as in the paper's formula;
the scale does not change the directions and only rescales W by a constant.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simtool.errors import SimtoolError
from simtool.reduce.base import LinearReducer, check_finite, iter_chunks
from simtool.stats import spearman

POWER_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
RANK_RTOL = 1e-10  # eigenvalues below this fraction of the largest count as zero


@dataclass
class MeanCovariance:
    """Streaming float64 mean and covariance (divided by n) of ``(n, d)`` vectors in O(d² + chunk) memory.

    Sums are taken around a shift (the first chunk's mean) so that large offsets do not
    cancel catastrophically; the Gram update is a BLAS ``syrk`` (half of a ``X.T @ X``).
    """

    n: int = 0
    shift: np.ndarray | None = None
    sum: np.ndarray | None = None
    gram: np.ndarray | None = None  # upper triangle of Σ (x - shift)ᵀ(x - shift), Fortran order

    def update(self, chunk: np.ndarray) -> None:
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or len(chunk) == 0:
            return
        if self.shift is None:
            d = chunk.shape[1]
            check_finite(chunk, 0)
            self.shift = chunk.mean(axis=0, dtype=np.float64)
            self.sum = np.zeros(d)
            self.gram = np.zeros((d, d), order="F")
        elif chunk.shape[1] != len(self.shift):
            raise SimtoolError(f"vector dim changed from {len(self.shift)} to {chunk.shape[1]} at row {self.n}")
        centred = chunk.astype(np.float64)
        centred -= self.shift
        column_sums = centred.sum(axis=0)
        if not np.isfinite(column_sums).all():  # NaN and inf reach the sums: one pass finds both
            check_finite(chunk, self.n)
        self.sum += column_sums
        # scipy is imported here, not at module level: every index open loads this module (the reducer
        # registry), and scipy.linalg would add ~0.2 s to each `simtool search`
        from scipy.linalg.blas import dsyrk

        # syrk on the (d, m) Fortran view of the C-ordered (m, d) block: C += Aᵀ... without a copy
        self.gram = dsyrk(1.0, centred.T, beta=1.0, c=self.gram, trans=0, overwrite_c=True)
        self.n += len(chunk)

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (d,), covariance (d, d))`` in float64."""
        if self.n == 0 or self.shift is None or self.sum is None or self.gram is None:
            raise SimtoolError("no vectors to fit on")
        m = self.sum / self.n
        upper = np.triu(self.gram)
        gram = upper + np.triu(upper, 1).T
        return self.shift + m, gram / self.n - np.outer(m, m)


def eigen_descending(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, clipped at 0) and eigenvectors of a symmetric matrix.

    Each eigenvector's sign is fixed so its largest-magnitude entry is positive, which makes
    the result deterministic across LAPACK builds.
    """
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1].clip(min=0.0), vectors[:, ::-1]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return values, vectors * np.where(signs == 0, 1.0, signs)


class Whitening(LinearReducer):
    """Fit ``(x - μ) U diag((λ + eps)^-p)[:, :k]``, then L2-normalise (cosine search).

    ``dim`` (k): an int ≤ d, or None for d; ``"auto"`` tunes it with ``power`` on a dev set.
    ``power`` (p): a float, or ``"auto"`` to pick from :data:`POWER_GRID` on a dev set.
    ``eps``: added to the eigenvalues; 0 makes k above the rank of the data an error.
    After ``fit``: ``mean_`` (d,), ``eigenvalues_`` (d,), ``components_`` (d, d) float64,
    ``dim_``, ``power_``, ``grid_`` (the tuning grid, when tuned), ``backend_`` (what encoded the fit)
    and ``weight``/``bias``.
    """

    kind: ClassVar[str] = "whitening"
    config_keys: ClassVar[dict[str, str]] = {"power": "power_", "eps": "eps", "n_samples": "n_samples_"}

    def __init__(
        self,
        dim: int | str | None = None,
        power: float | str = 0.5,
        eps: float = 0.0,
        normalize: bool = True,
    ) -> None:
        if isinstance(dim, str) and dim != "auto":
            raise SimtoolError(f"dim must be an integer or 'auto', got {dim!r}")
        if isinstance(dim, int) and dim <= 0:
            raise SimtoolError(f"dim must be positive, got {dim}")
        if isinstance(power, str) and power != "auto":
            raise SimtoolError(f"power must be a number or 'auto', got {power!r}")
        if eps < 0:
            raise SimtoolError(f"eps must be ≥ 0, got {eps}")
        self.dim, self.power, self.eps, self.normalize = dim, power, eps, normalize
        self.source_fingerprint: str | None = None
        self.grid_: list[dict[str, float]] = []
        self.backend_: dict[str, Any] | None = None  # the encode backend of a fit through a model (workflows)

    def fit(
        self,
        vectors: np.ndarray | Iterable[np.ndarray],
        *,
        tune: tuple[np.ndarray, np.ndarray, Sequence[float] | np.ndarray] | None = None,
        source_fingerprint: str | None = None,
    ) -> Whitening:
        """Fit on ``(n, d)`` vectors: an array, a memmap, or an iterable of chunks (streamed).

        ``tune = (emb1, emb2, gold)``: raw dev-set embeddings ``(m, d)`` of both sides and gold
        scores; required when ``dim`` or ``power`` is ``"auto"``.
        """
        stats = MeanCovariance()
        for chunk in iter_chunks(vectors):
            stats.update(chunk)
        self.mean_, cov = stats.finalize()
        self.n_samples_ = stats.n
        self.eigenvalues_, self.components_ = eigen_descending(cov)
        self.source_fingerprint = source_fingerprint
        d = len(self.mean_)
        if isinstance(self.dim, int) and self.dim > d:
            raise SimtoolError(f"dim={self.dim} is larger than the vectors' dimension {d}")
        auto = self.dim == "auto" or self.power == "auto"
        if auto and tune is None:
            raise SimtoolError("dim or power 'auto' needs tune=(emb1, emb2, gold), a dev set to tune on")
        if auto:
            assert tune is not None
            self.dim_, self.power_ = self._tune(*tune)
        else:
            self.dim_, self.power_ = (d if self.dim is None else int(self.dim)), float(self.power)
        self._check_rank(self.dim_)
        self._set_affine(self._weight(self.dim_, self.power_), self.mean_)
        return self

    def _check_rank(self, k: int) -> None:
        rank = int((self.eigenvalues_ > RANK_RTOL * self.eigenvalues_[0]).sum())
        if k <= rank:
            return
        if self.eps == 0 and self.power_ > 0:
            raise SimtoolError(
                f"dim={k} exceeds the rank {rank} of the fitting data ({self.n_samples_} vectors); "
                "lower dim, fit on more vectors, or regularise with eps=1e-8"
            )
        warnings.warn(f"dim {k} exceeds the data's rank {rank}; the extra directions are noise", stacklevel=3)

    def _weight(self, k: int, p: float) -> np.ndarray:
        scale = (self.eigenvalues_[:k] + self.eps) ** (-p) if p else np.ones(k)
        return self.components_[:, :k] * scale

    def _tune(self, emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float] | np.ndarray) -> tuple[int, float]:
        d = len(self.mean_)
        dims = candidate_dims(d) if self.dim == "auto" else [d if self.dim is None else int(self.dim)]
        powers = POWER_GRID if self.power == "auto" else (float(self.power),)
        gold_arr = np.asarray(gold, dtype=np.float64)
        c1, c2 = emb1 - self.mean_, emb2 - self.mean_
        best: tuple[float, int, float] = (-math.inf, d, 0.0)
        self.grid_ = []
        for k in dims:
            for p in powers:
                if p > 0 and self.eps == 0 and self.eigenvalues_[k - 1] <= RANK_RTOL * self.eigenvalues_[0]:
                    continue  # would divide by a zero eigenvalue
                w = self._weight(k, p)
                a, c = _unit(c1 @ w), _unit(c2 @ w)
                score = 100 * spearman((a * c).sum(axis=1), gold_arr)
                self.grid_.append({"dim": k, "power": p, "cosine_spearman": score})
                best = max(best, (score, -k, -p))  # ties: fewer dims, then the smaller power
        if best[0] == -math.inf:
            raise SimtoolError("no (dim, power) candidate could be evaluated on the dev set")
        return -best[1], -best[2]

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            **super().tensors(),
            "eigenvalues": self.eigenvalues_.astype(np.float64),
        }

    @classmethod
    def _restore(cls, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Whitening:
        obj = super()._restore(config, tensors)
        assert isinstance(obj, Whitening)
        obj.dim_, obj.dim, obj.power = obj.out_dim, obj.out_dim, obj.power_
        obj.mean_, obj.eigenvalues_ = tensors["center"].astype(np.float64), tensors["eigenvalues"]
        obj.grid_ = []
        return obj


def candidate_dims(d: int) -> list[int]:
    """k for ``dim="auto"``: d and the usual fractions of it (3/4, 2/3, 1/2, 1/3, 1/4, 1/6)."""
    return sorted({d, *(max(1, round(d * f)) for f in (3 / 4, 2 / 3, 1 / 2, 1 / 3, 1 / 4, 1 / 6))}, reverse=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
