"""Whitening and JL projection against float64 numpy references, faiss's PCAMatrix, and the stated rules."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from simtool.encoder import encode_texts, load_encoder, model_fingerprint
from simtool.errors import ParameterError, SimtoolError
from simtool.reduce import MeanCovariance, RandomProjection, Whitening, entropy_dim, jl_dim, load_reducer
from simtool.reduce.export import export_reduced_model
from simtool.reduce.whitening import POWER_GRID, candidate_dims


def _data(n: int = 3000, d: int = 24, seed: int = 0) -> np.ndarray:
    """Anisotropic, offset vectors (like raw sentence embeddings): float32 (n, d)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * np.logspace(0, -2, d)[:, None]
    return (rng.standard_normal((n, d)) @ mixing + 5.0).astype(np.float32)


def _reference(x: np.ndarray, k: int, p: float, eps: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 numpy: mean, covariance (divided by n), W = U diag((λ + eps)^-p)[:, :k]."""
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=0)
    cov = np.cov(x64.T, bias=True)
    lam, u = np.linalg.eigh(cov)
    lam, u = lam[::-1], u[:, ::-1]
    return mu, cov, u[:, :k] * (lam[:k] + eps) ** (-p)


def _same_up_to_column_sign(a: np.ndarray, b: np.ndarray, rtol: float) -> None:
    signs = np.sign((a * b).sum(axis=0))
    np.testing.assert_allclose(a * signs, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize(("k", "p"), [(24, 0.5), (10, 0.5), (24, 0.0), (8, 0.1)])
def test_mean_covariance_and_w_match_float64_numpy(k: int, p: float) -> None:
    x = _data()
    w = Whitening(k, p).fit(x)
    mu, cov, ref_w = _reference(x, k, p)
    np.testing.assert_allclose(w.mean_, mu, rtol=1e-6, atol=1e-9)
    rebuilt = (w.components_ * w.eigenvalues_) @ w.components_.T
    np.testing.assert_allclose(rebuilt, cov, rtol=1e-6, atol=1e-6 * np.abs(cov).max())
    _same_up_to_column_sign(w.weight.astype(np.float64), ref_w, rtol=1e-5)  # stored as float32
    np.testing.assert_allclose(w.bias, -(w.mean_ @ w.weight.astype(np.float64)), rtol=1e-5, atol=1e-5)


def test_streaming_in_chunks_equals_one_shot() -> None:
    x = _data(n=5000)
    one = Whitening(12, 0.5).fit(x)
    chunks = Whitening(12, 0.5).fit(x[i : i + 333] for i in range(0, len(x), 333))
    np.testing.assert_allclose(chunks.mean_, one.mean_, rtol=1e-12)
    # float64 sums in another order: equal to ~1e-16 of the spectrum, so the tiniest eigenvalue (~1e-7 here)
    # moves in its 9th digit; the tolerance is relative to the largest, not to each.
    spectrum = float(one.eigenvalues_.max())
    np.testing.assert_allclose(chunks.eigenvalues_, one.eigenvalues_, rtol=1e-9, atol=1e-14 * spectrum)
    np.testing.assert_allclose(chunks.weight, one.weight, rtol=1e-6)
    memmapped = np.lib.format.open_memmap(
        "/dev/shm/simtool-test.npy" if Path("/dev/shm").exists() else "simtool-test.npy",
        mode="w+",
        dtype=np.float32,
        shape=x.shape,
    )
    memmapped[:] = x
    np.testing.assert_allclose(Whitening(12, 0.5).fit(memmapped).weight, one.weight, rtol=1e-6)
    Path(memmapped.filename).unlink()


def test_full_whitening_gives_identity_covariance() -> None:
    x = _data()
    w = Whitening(None, 0.5, normalize=False).fit(x)
    y = w.transform(x).astype(np.float64)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(24), atol=1e-4)
    # float32 output: the centre's rounding, amplified by 1/sqrt(smallest eigenvalue), bounds the mean's accuracy
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=2e-3)
    pca = Whitening(None, 0.0, normalize=False).fit(x).transform(x).astype(np.float64)
    cov = np.cov(pca.T, bias=True)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-4 * cov.max())  # decorrelated, not scaled
    assert np.all(np.diff(np.diag(cov)) <= 1e-6 * cov.max())  # variances descending


def test_matches_faiss_pca_matrix_up_to_sign() -> None:
    """faiss's eigenvalues are those of the scatter matrix (not divided by n): its output is ours / sqrt(n)."""
    x = _data(n=4000)
    pca = faiss.PCAMatrix(24, 10, -0.5)
    pca.train(x)
    ours = Whitening(10, 0.5, normalize=False).fit(x).transform(x)
    _same_up_to_column_sign(ours / math.sqrt(len(x)), pca.apply(x), rtol=2e-3)


def test_save_and_load_through_safetensors(tmp_path: Path) -> None:
    x = _data()
    for reducer in (Whitening(8, 0.2).fit(x, source_fingerprint="abc"), RandomProjection(6, seed=3).fit(x)):
        reducer.save(tmp_path / "r.safetensors")
        again = load_reducer(tmp_path / "r.safetensors")
        assert type(again) is type(reducer) and again.config() == reducer.config()
        np.testing.assert_array_equal(again.transform(x), reducer.transform(x))


def test_bad_inputs() -> None:
    x = _data(n=200)
    with pytest.raises(SimtoolError, match="dim=30 is larger than the vectors' dimension 24"):
        Whitening(30).fit(x)
    with pytest.raises(SimtoolError, match=r"dim=20 exceeds the rank 9 of the fitting data \(10 vectors\)"):
        Whitening(20, 0.5).fit(x[:10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = Whitening(20, 0.5, eps=1e-3).fit(x[:10])
    assert np.isfinite(w.weight).all() and any("exceeds the data's rank" in str(c.message) for c in caught)
    bad = x.copy()
    bad[137, 3] = np.nan
    with pytest.raises(SimtoolError, match="vector row 137 contains NaN or inf"):
        Whitening(8).fit(bad[i : i + 50] for i in range(0, 200, 50))
    bad[137, 3] = np.inf
    with pytest.raises(SimtoolError, match="row 137"):
        MeanCovariance().update(bad)
    with pytest.raises(SimtoolError, match=r"needs tune=.*a dev set"):
        Whitening(8, "auto").fit(x)
    with pytest.raises(SimtoolError, match="dim=30 is larger"):
        RandomProjection(30).fit(24)


def test_power_auto_picks_the_best_dev_score() -> None:
    rng = np.random.default_rng(1)
    x = _data(n=2000)
    a, b = x[:300], x[:300] + rng.standard_normal((300, 24)).astype(np.float32) * 0.3
    gold = -np.linalg.norm(a - b, axis=1)  # a target that centring and scaling change
    w = Whitening(12, "auto").fit(x, tune=(a, b, gold))
    assert {row["power"] for row in w.grid_} == set(POWER_GRID) and len(w.grid_) == len(POWER_GRID)
    best = max(w.grid_, key=lambda r: r["cosine_spearman"])
    assert (w.power_, w.dim_) == (best["power"], 12)
    both = Whitening("auto", "auto").fit(x, tune=(a, b, gold))
    assert len(both.grid_) == len(POWER_GRID) * len(candidate_dims(24))
    assert max(r["cosine_spearman"] for r in both.grid_) >= best["cosine_spearman"] - 1e-9


def test_random_projection_is_seeded_gaussian_with_variance_1_over_k() -> None:
    a, b = RandomProjection(64, seed=7).fit(384), RandomProjection(64, seed=7).fit(384)
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, RandomProjection(64, seed=8).fit(384).weight)
    # 384*64 entries: the sample variance of N(0, 1/64) is within 3% (> 6 standard errors) of 1/64
    assert a.weight.var() == pytest.approx(1 / 64, rel=0.03) and abs(a.weight.mean()) < 0.005
    assert a.bias is None


@pytest.mark.parametrize("distribution", ["gaussian", "sparse"])
def test_projection_preserves_norms_in_expectation(distribution: str) -> None:
    """E‖Ax‖² = ‖x‖²: over 40 seeds the mean ratio is 1 within 4 standard errors."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 256)).astype(np.float32)
    projections = [RandomProjection(32, distribution, seed=s, normalize=False).fit(256) for s in range(40)]  # type: ignore[arg-type]
    ratios = np.array([np.linalg.norm(p.transform(x), axis=1) ** 2 for p in projections])
    ratios /= np.linalg.norm(x, axis=1) ** 2  # (seeds, vectors)
    per_seed = ratios.mean(axis=1)
    assert abs(per_seed.mean() - 1) < 4 * per_seed.std(ddof=1) / math.sqrt(len(per_seed))
    # one 32-dim projection does distort single vectors: spread ≈ sqrt(2/32) = 0.25 for the Gaussian
    assert 0.1 < ratios.std() < 0.4


def test_dimension_rules() -> None:
    assert entropy_dim(100_000) == 96 and entropy_dim(5_000_000) == 128
    assert jl_dim(100_000, 0.1) == math.ceil(24 * math.log(100_000) / 0.01) == 27632
    with pytest.raises(ParameterError, match=r"eps must be in \(0, 1\), got 1.5"):
        jl_dim(10, 1.5)


def test_export_loads_in_plain_sentence_transformers(tmp_path: Path, tiny_st: Path) -> None:
    model = load_encoder(tiny_st, device="cpu")
    texts = ["the cat sat on the road", "a big red bus", "python code", "night and day", "a fish swims"]
    fit_texts = [f"{a} {b} {c}" for a in ("the", "a", "big") for b in ("cat", "dog", "bus") for c in ("run", "eat")]
    raw = encode_texts(model, fit_texts * 3)
    for reducer in (Whitening(12, 0.5, eps=1e-6), RandomProjection(12)):
        reducer.fit(raw, source_fingerprint=model_fingerprint(model))
        out = export_reduced_model(model, reducer, tmp_path / reducer.kind)
        plain = SentenceTransformer(str(out), device="cpu")  # no trust_remote_code
        got = plain.encode(texts)
        assert got.shape == (5, 12)
        np.testing.assert_allclose(got, reducer.transform(encode_texts(model, texts)), atol=1e-5)
    with pytest.raises(SimtoolError, match="fitted on vectors of model other"):
        export_reduced_model(model, Whitening(4).fit(raw, source_fingerprint="other"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _old_format_file(path: Path, config: dict[str, object], tensors: dict[str, np.ndarray]) -> Path:
    """A reducer file exactly as the code before the registry wrote it: its arrays and the JSON config, in
    ``LinearReducer.save``'s metadata key (``save_file(tensors, path, metadata={"simtool_reducer": ...})``)."""
    import json

    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata={"simtool_reducer": json.dumps(config)})
    return path


def test_files_in_the_old_layout_load_and_save_back_the_same(tmp_path: Path) -> None:
    import json

    from safetensors import safe_open

    rng = np.random.default_rng(0)
    weight, center = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    eigenvalues = np.sort(rng.random(6))[::-1].astype(np.float64)
    whitening = {
        "kind": "whitening",
        "in_dim": 6,
        "out_dim": 4,
        "normalize": True,
        "source_fingerprint": "abc",
        "power": 0.2,
        "eps": 0.0,
        "n_samples": 500,
    }
    projection = {
        "kind": "projection",
        "in_dim": 6,
        "out_dim": 4,
        "normalize": False,
        "source_fingerprint": None,
        "distribution": "sparse",
        "seed": 7,
    }
    files = {
        "w": _old_format_file(
            tmp_path / "w.safetensors", whitening, {"weight": weight, "center": center, "eigenvalues": eigenvalues}
        ),
        "p": _old_format_file(tmp_path / "p.safetensors", projection, {"weight": weight}),
    }
    w, p = load_reducer(files["w"]), load_reducer(files["p"])
    assert isinstance(w, Whitening) and isinstance(p, RandomProjection)
    assert (w.power_, w.power, w.eps, w.n_samples_, w.dim, w.dim_) == (0.2, 0.2, 0.0, 500, 4, 4)
    assert (p.distribution, p.seed, p.dim, p.normalize) == ("sparse", 7, 4, False)
    np.testing.assert_array_equal(w.mean_, center.astype(np.float64))
    x = rng.standard_normal((5, 6)).astype(np.float32)
    y = (x - center) @ weight
    np.testing.assert_allclose(w.transform(x), y / np.linalg.norm(y, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(p.transform(x), x @ weight, rtol=1e-6)
    for reducer, config in ((w, whitening), (p, projection)):
        reducer.save(tmp_path / "again.safetensors")
        with safe_open(str(tmp_path / "again.safetensors"), framework="numpy") as f:
            assert f.metadata() == {"simtool_reducer": json.dumps(config)}  # same keys, same order


def test_reducers_register_by_kind_when_defined() -> None:
    from simtool.reduce.base import REDUCERS, LinearReducer

    assert REDUCERS["whitening"] is Whitening and REDUCERS["projection"] is RandomProjection
    try:

        class Scaled(LinearReducer):
            kind: ClassVar[str] = "scaled-test"
            config_keys: ClassVar[dict[str, str]] = {"factor": "factor"}

        assert REDUCERS["scaled-test"] is Scaled
        with pytest.raises(TypeError, match="reducer kind 'whitening' is taken by Whitening"):

            class Again(LinearReducer):
                kind: ClassVar[str] = "whitening"

    finally:
        REDUCERS.pop("scaled-test", None)
    assert REDUCERS["whitening"] is Whitening
