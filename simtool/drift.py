"""How far apart two embedding distributions are: closed forms between fitted Gaussians (techniques §7.3).

Each side is summarised by its streamed float64 mean and covariance
(:class:`simtool.reduce.whitening.MeanCovariance`) and a small reservoir sample of rows
(for the mean cosine of random pairs). Between N(μ_a, Σ_a) and N(μ_b, Σ_b):

- KL(a‖b) = ½[Δᵀ Σ_b⁻¹ Δ − log det(Σ_b⁻¹ Σ_a) + tr(Σ_b⁻¹ Σ_a) − n], Δ = μ_a − μ_b;
- Bhattacharyya = ⅛ Δᵀ Σ⁻¹ Δ + ½ log(det Σ / sqrt(det Σ_a det Σ_b)), Σ = (Σ_a + Σ_b)/2;
- W₂² = ‖Δ‖² + tr Σ_a + tr Σ_b − 2 tr((Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}) (the Fréchet distance).

Everything goes through symmetric eigendecompositions. Embeddings are often rank-deficient
(all-MiniLM-L6-v2 has constant dimensions), so KL and Bhattacharyya are computed on the
subspace both Gaussians live on; when the supports differ (a direction that varies in one
and not the other, or means apart along a constant direction) the divergence is infinite,
and the result carries a one-line reason instead of a number. W₂ is always finite.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simtool.errors import SimtoolError
from simtool.reduce.base import iter_chunks
from simtool.reduce.whitening import MeanCovariance

log = logging.getLogger(__name__)

RTOL = 1e-8  # eigenvalues below this fraction of the largest count as zero (float32 inputs carry ~1e-7 noise)
SAMPLE_ROWS = 2000


@dataclass
class GaussianStats:
    """Mean ``(d,)`` and covariance ``(d, d)`` (float64, divided by n) of n vectors, plus a row sample ``(m, d)``."""

    mean: np.ndarray
    cov: np.ndarray
    n: int
    sample: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(
        cls, vectors: np.ndarray | Iterable[np.ndarray], *, sample_rows: int = SAMPLE_ROWS, seed: int = 0
    ) -> GaussianStats:
        """Stream ``(n, d)`` vectors (an array, memmap or iterable of chunks) once."""
        stats = MeanCovariance()
        rng = np.random.default_rng(seed)
        reservoir: np.ndarray | None = None
        seen = 0
        for chunk in iter_chunks(vectors):
            chunk = np.asarray(chunk)
            if chunk.ndim != 2:
                raise SimtoolError(f"vectors must be 2-d (n, d), got shape {chunk.shape}")
            stats.update(chunk)
            if len(chunk) == 0:
                continue
            if reservoir is None:
                reservoir = np.empty((0, chunk.shape[1]), dtype=np.float64)
            # reservoir sampling, vectorised per chunk (algorithm R): row t replaces a slot with prob. k/(t+1)
            take = max(0, min(sample_rows - len(reservoir), len(chunk)))
            reservoir = np.vstack([reservoir, chunk[:take]])
            rest = np.arange(seen + take, seen + len(chunk))
            if len(rest):
                slots = (rng.random(len(rest)) * (rest + 1)).astype(np.int64)
                keep = slots < sample_rows
                reservoir[slots[keep]] = chunk[take:][keep]
            seen += len(chunk)
        if stats.n < 2:
            raise SimtoolError(f"need at least 2 vectors to fit a Gaussian, got {stats.n}")
        mean, cov = stats.finalize()
        assert reservoir is not None
        return cls(mean=mean, cov=(cov + cov.T) / 2, n=stats.n, sample=reservoir)

    def mean_pair_cosine(self, pairs: int = 10_000, seed: int = 0) -> float:
        """Mean cosine between random pairs of distinct sampled rows."""
        m = len(self.sample)
        if m < 2:
            return math.nan
        rng = np.random.default_rng(seed)
        i = rng.integers(0, m, pairs)
        j = (i + rng.integers(1, m, pairs)) % m  # j != i
        x = self.sample / np.clip(np.linalg.norm(self.sample, axis=1, keepdims=True), 1e-12, None)
        return float((x[i] * x[j]).sum(axis=1).mean())


def standard_normal(dim: int) -> GaussianStats:
    """N(0, I) in ``dim`` dimensions, the reference for isotropy."""
    return GaussianStats(mean=np.zeros(dim), cov=np.eye(dim), n=0)


def _eigh(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return values.clip(min=0.0), vectors


def sqrtm_psd(cov: np.ndarray) -> np.ndarray:
    """Σ^{1/2} of a symmetric PSD matrix via its eigendecomposition (negative round-off clipped)."""
    values, vectors = _eigh(cov)
    return (vectors * np.sqrt(values)) @ vectors.T


def _support(cov: np.ndarray, scale: float, rtol: float) -> np.ndarray:
    """Orthonormal basis ``(d, r)`` of the directions in which ``cov`` varies."""
    values, vectors = _eigh(cov)
    return vectors[:, values > rtol * scale]


def _off_support(x: np.ndarray, basis: np.ndarray) -> float:
    """Norm of the part of ``x`` (a vector or the columns of a matrix) outside span(basis)."""
    return float(np.linalg.norm(x - basis @ (basis.T @ x)))


def _logdet_pd(m: np.ndarray) -> float:
    values = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.log(values).sum())


def kl_divergence(
    p: GaussianStats, q: GaussianStats, *, rtol: float = RTOL, names: tuple[str, str] = ("p", "q")
) -> tuple[float | None, str | None]:
    """``(KL(p‖q) in nats, None)``, or ``(None, reason)`` when it is infinite (supports differ).

    ``names`` label p and q in the reason."""
    pn, qn = names
    _check_dims(p, q)
    scale = max(float(np.linalg.eigvalsh(p.cov)[-1]), float(np.linalg.eigvalsh(q.cov)[-1]), 1e-300)
    basis = _support(q.cov, scale, rtol)
    r = basis.shape[1]
    delta = p.mean - q.mean
    tol = math.sqrt(rtol * scale)
    if _off_support(delta, basis) > tol * math.sqrt(p.dim) or _off_support(sqrtm_psd(p.cov), basis) > tol * p.dim:
        return None, (
            f"KL({pn}||{qn}) is infinite: {pn} varies or sits off the subspace where {qn} varies "
            f"({qn}'s covariance has rank {r} of {p.dim})"
        )
    sp, sq = basis.T @ p.cov @ basis, basis.T @ q.cov @ basis
    if float(np.linalg.eigvalsh(sp)[0]) <= rtol * scale:
        return None, f"KL({pn}||{qn}) is infinite: {pn} is constant along a direction in which {qn} varies"
    dq = basis.T @ delta
    # Σ_q⁻¹ through its Cholesky factor: solves, never an explicit inverse
    chol = np.linalg.cholesky(sq)
    solved = np.linalg.solve(chol, sp)
    trace = float(np.trace(np.linalg.solve(chol.T, solved)))
    maha = float(np.sum(np.linalg.solve(chol, dq) ** 2))
    logdet = _logdet_pd(sp) - 2 * float(np.log(np.diag(chol)).sum())
    return 0.5 * (maha - logdet + trace - r), None


def bhattacharyya(p: GaussianStats, q: GaussianStats, *, rtol: float = RTOL) -> tuple[float | None, str | None]:
    """``(Bhattacharyya distance in nats, None)``, or ``(None, reason)`` when infinite."""
    _check_dims(p, q)
    avg = (p.cov + q.cov) / 2
    scale = max(float(np.linalg.eigvalsh(avg)[-1]), 1e-300)
    basis = _support(avg, scale, rtol)
    delta = p.mean - q.mean
    if _off_support(delta, basis) > math.sqrt(rtol * scale * p.dim):
        return None, "Bhattacharyya is infinite: the means differ along a direction in which both are constant"
    s, sp, sq = (basis.T @ c @ basis for c in (avg, p.cov, q.cov))
    low = min(float(np.linalg.eigvalsh(sp)[0]), float(np.linalg.eigvalsh(sq)[0]))
    if low <= rtol * scale:
        return None, "Bhattacharyya is infinite: one side is constant along a direction in which the other varies"
    d = basis.T @ delta
    chol = np.linalg.cholesky(s)
    maha = float(np.sum(np.linalg.solve(chol, d) ** 2))
    logdet_s = 2 * float(np.log(np.diag(chol)).sum())
    return maha / 8 + 0.5 * (logdet_s - 0.5 * (_logdet_pd(sp) + _logdet_pd(sq))), None


def wasserstein2(p: GaussianStats, q: GaussianStats) -> float:
    """W₂ between the two Gaussians (the Fréchet distance, not squared)."""
    _check_dims(p, q)
    root_p = sqrtm_psd(p.cov)
    cross = sqrtm_psd(root_p @ q.cov @ root_p)
    w2sq = float(np.sum((p.mean - q.mean) ** 2) + np.trace(p.cov) + np.trace(q.cov) - 2 * np.trace(cross))
    return math.sqrt(max(w2sq, 0.0))


def anisotropy(stats: GaussianStats) -> float:
    """Scale-free distance of the covariance's shape from isotropic: ‖(Σ/s)^{1/2} − I‖_F / √d, s = tr Σ / d.

    0 for an isotropic covariance; near 1 when the variance sits in few directions. It ignores
    the mean and the overall scale, which W₂ to N(0, I) mixes in (unit-norm embeddings sit at
    W₂ ≈ √d from N(0, I) whatever their shape).
    """
    d = stats.dim
    s = float(np.trace(stats.cov)) / d
    if s <= 0:
        return math.nan
    values = _eigh(stats.cov / s)[0]
    return float(math.sqrt(np.sum((np.sqrt(values) - 1.0) ** 2) / d))


def _check_dims(p: GaussianStats, q: GaussianStats) -> None:
    if p.dim != q.dim:
        raise SimtoolError(f"the two sides have different dimensions: {p.dim} and {q.dim}")


def gaussian_distances(a_stats: GaussianStats, b_stats: GaussianStats, *, rtol: float = RTOL) -> dict[str, Any]:
    """All closed forms between ``a_stats`` and ``b_stats``, and of each from N(0, I).

    Values in nats (KL, Bhattacharyya) and embedding units (W₂). An undefined divergence is
    ``None`` with its reason under ``"<name>_undefined"``.
    """
    out: dict[str, Any] = {"dim": a_stats.dim}
    kl_ab, why_ab = kl_divergence(a_stats, b_stats, rtol=rtol, names=("A", "B"))
    kl_ba, why_ba = kl_divergence(b_stats, a_stats, rtol=rtol, names=("B", "A"))
    bd, why_bd = bhattacharyya(a_stats, b_stats, rtol=rtol)
    out.update(kl_a_b=kl_ab, kl_b_a=kl_ba, bhattacharyya=bd, w2=wasserstein2(a_stats, b_stats))
    for key, why in (("kl_a_b", why_ab), ("kl_b_a", why_ba), ("bhattacharyya", why_bd)):
        if why is not None:
            out[f"{key}_undefined"] = why
    for name, s in (("a", a_stats), ("b", b_stats)):
        ref = standard_normal(s.dim)
        out[f"w2_{name}_to_standard"] = wasserstein2(s, ref)
        out[f"anisotropy_{name}"] = anisotropy(s)
        kl, why = kl_divergence(s, ref, rtol=rtol, names=(name.upper(), "N(0,I)"))
        out[f"kl_{name}_to_standard"] = kl
        if why is not None:
            out[f"kl_{name}_to_standard_undefined"] = why
    return out


def whitened(stats: GaussianStats, fitted_on: GaussianStats, *, rtol: float = RTOL) -> GaussianStats:
    """``stats`` pushed through the whitening map ``(x − μ) U Λ^{-1/2}`` fitted on ``fitted_on`` (its support only).

    Closed form (mean and covariance of a linear map), before any L2 normalisation.
    """
    values, vectors = _eigh(fitted_on.cov)
    keep = values > rtol * max(float(values.max()), 1e-300)
    w = vectors[:, keep] / np.sqrt(values[keep])
    sample = (stats.sample - fitted_on.mean) @ w if stats.sample.size else stats.sample
    return GaussianStats(mean=(stats.mean - fitted_on.mean) @ w, cov=w.T @ stats.cov @ w, n=stats.n, sample=sample)


def drift_report(a: GaussianStats, b: GaussianStats, *, rtol: float = RTOL, seed: int = 0) -> dict[str, Any]:
    """:func:`gaussian_distances` plus sizes, mean cosines and the effect of whitening fitted on A."""
    report = gaussian_distances(a, b, rtol=rtol)
    report.update(
        n_a=a.n,
        n_b=b.n,
        mean_cosine_a=a.mean_pair_cosine(seed=seed),
        mean_cosine_b=b.mean_pair_cosine(seed=seed),
    )
    wa, wb = whitened(a, a, rtol=rtol), whitened(b, a, rtol=rtol)
    report["whitened_on_a"] = {
        "dim": wa.dim,
        "w2": wasserstein2(wa, wb),
        "w2_a_to_standard": wasserstein2(wa, standard_normal(wa.dim)),
        "w2_b_to_standard": wasserstein2(wb, standard_normal(wb.dim)),
        "anisotropy_a": anisotropy(wa),
        "anisotropy_b": anisotropy(wb),
        "mean_cosine_a": wa.mean_pair_cosine(seed=seed),
        "mean_cosine_b": wb.mean_pair_cosine(seed=seed),
    }
    report["recommendation"] = recommendation(report)
    return report


def recommendation(report: dict[str, Any]) -> str:
    """One line a user can act on, from a :func:`drift_report`."""
    w = report["whitened_on_a"]
    iso = (
        f"whitening fitted on A takes B's anisotropy from {report['anisotropy_b']:.3f} to {w['anisotropy_b']:.3f} "
        f"(A's: {report['anisotropy_a']:.3f} -> {w['anisotropy_a']:.3f}; B's mean random-pair cosine "
        f"{report['mean_cosine_b']:.3f} -> {w['mean_cosine_b']:.3f})"
    )
    bd = report["bhattacharyya"]
    if bd is None:
        return f"A and B do not share a support; refit on B. {iso}"
    if bd < 0.05:
        verdict = "A and B look alike (Bhattacharyya < 0.05): a whitening or index fitted on A fits B"
    elif bd < 0.5:
        verdict = f"moderate drift (Bhattacharyya {bd:.3f}): refit whitening on A and B together"
    else:
        verdict = f"strong drift (Bhattacharyya {bd:.3f}): refit on B (or on both) rather than reuse A's fit"
    return f"{verdict}; {iso}"


def load_vectors(path: str, *, model: Any = None, batch_size: int = 64) -> Iterable[np.ndarray] | np.ndarray:
    """The vectors behind ``path``: an ``.npy`` matrix, an index directory's stored vectors, or a corpus encoded by
    ``model`` (a loaded encoder; required for corpora)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        from simtool.index import live_vectors

        return live_vectors(p)
    if not p.is_file():
        raise SimtoolError(f"cannot read {p}: no such file or directory")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise SimtoolError(f"cannot read {p} as .npy: {e}") from None
        if arr.ndim != 2 or len(arr) == 0:
            raise SimtoolError(f"{p} must hold a non-empty (n, d) matrix, got shape {arr.shape}")
        return arr
    if model is None:
        raise SimtoolError(f"{p} is a corpus file: it needs a model to encode it")
    from simtool.encoder import batched_documents, encode_texts
    from simtool.index import CorpusFields

    fields = CorpusFields()
    if fields.count(p) == 0:
        raise SimtoolError(f"{p} holds no documents")
    return (
        encode_texts(model, [d.encoded_text for d in batch], batch_size=batch_size)
        for batch in batched_documents(fields.read(p))
    )
