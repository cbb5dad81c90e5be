"""simtool.drift: closed forms against known cases, scipy.linalg.sqrtm, rank-deficient guards, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import sqrtm

from simtool.drift import (
    GaussianStats,
    bhattacharyya,
    drift_report,
    gaussian_distances,
    kl_divergence,
    standard_normal,
    wasserstein2,
    whitened,
)
from simtool.errors import SimtoolError
from tests.conftest import run_cli


def g(mean: list[float] | np.ndarray, cov: np.ndarray) -> GaussianStats:
    return GaussianStats(mean=np.asarray(mean, dtype=np.float64), cov=np.asarray(cov, dtype=np.float64), n=100)


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_kl_between_diagonal_gaussians_matches_the_sum_of_1d_kls() -> None:
    mp, vp = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.25, 4.0])
    mq, vq = np.array([0.0, 1.0, 1.5]), np.array([2.0, 1.0, 0.5])
    expected = sum(
        0.5 * (math.log(b / a) + (a + (m1 - m2) ** 2) / b - 1) for m1, a, m2, b in zip(mp, vp, mq, vq, strict=True)
    )
    kl, why = kl_divergence(g(mp, np.diag(vp)), g(mq, np.diag(vq)))
    assert why is None and kl == pytest.approx(expected, rel=1e-12)


def test_kl_full_covariance_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(0)
    sp, sq = random_spd(rng, 5), random_spd(rng, 5)
    mp, mq = rng.standard_normal(5), rng.standard_normal(5)
    qi = np.linalg.inv(sq)
    d = mp - mq
    expected = 0.5 * (d @ qi @ d - np.log(np.linalg.det(qi @ sp)) + np.trace(qi @ sp) - 5)
    assert kl_divergence(g(mp, sp), g(mq, sq))[0] == pytest.approx(expected, rel=1e-10)
    assert kl_divergence(g(mp, sp), g(mp, sp))[0] == pytest.approx(0.0, abs=1e-10)
    # against N(0, I): ½[‖μ‖² − log det Σ + tr Σ − n]
    expected0 = 0.5 * (mp @ mp - np.log(np.linalg.det(sp)) + np.trace(sp) - 5)
    assert kl_divergence(g(mp, sp), standard_normal(5))[0] == pytest.approx(expected0, rel=1e-10)


def test_bhattacharyya_matches_the_determinant_formula_and_is_symmetric() -> None:
    rng = np.random.default_rng(1)
    sp, sq = random_spd(rng, 4), random_spd(rng, 4)
    mp, mq = rng.standard_normal(4), rng.standard_normal(4)
    s = (sp + sq) / 2
    d = mp - mq
    det = np.linalg.det
    expected = d @ np.linalg.inv(s) @ d / 8 + 0.5 * np.log(det(s) / math.sqrt(det(sp) * det(sq)))
    assert bhattacharyya(g(mp, sp), g(mq, sq))[0] == pytest.approx(expected, rel=1e-10)
    assert bhattacharyya(g(mq, sq), g(mp, sp))[0] == pytest.approx(expected, rel=1e-10)


def test_bhattacharyya_1d_against_numerical_integration() -> None:
    m1, s1, m2, s2 = 0.3, 0.7, -0.4, 1.6
    x = np.linspace(-20, 20, 400_001)
    pdf = lambda m, s: np.exp(-((x - m) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    expected = -math.log(np.trapezoid(np.sqrt(pdf(m1, s1) * pdf(m2, s2)), x))
    assert bhattacharyya(g([m1], [[s1 * s1]]), g([m2], [[s2 * s2]]))[0] == pytest.approx(expected, rel=1e-8)


def test_w2_commuting_case_and_scipy_sqrtm() -> None:
    rng = np.random.default_rng(2)
    # commuting: same eigenvectors -> ‖Δ‖² + ‖Σp^½ − Σq^½‖_F²
    u = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    lp, lq = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.2, 2.5, 1.0, 1.0])
    sp, sq = u @ np.diag(lp) @ u.T, u @ np.diag(lq) @ u.T
    mp, mq = rng.standard_normal(4), rng.standard_normal(4)
    expected = math.sqrt(np.sum((mp - mq) ** 2) + np.sum((np.sqrt(lp) - np.sqrt(lq)) ** 2))
    assert wasserstein2(g(mp, sp), g(mq, sq)) == pytest.approx(expected, rel=1e-10)
    # general: the Fréchet form with scipy's sqrtm of the (non-symmetric) product
    sp, sq = random_spd(rng, 6), random_spd(rng, 6)
    mp, mq = rng.standard_normal(6), rng.standard_normal(6)
    frechet = np.sum((mp - mq) ** 2) + np.trace(sp) + np.trace(sq) - 2 * np.trace(sqrtm(sp @ sq)).real
    assert wasserstein2(g(mp, sp), g(mq, sq)) ** 2 == pytest.approx(frechet, rel=1e-9)
    # to N(0, I): ‖μ‖² + ‖Σ^½ − I‖_F²
    to_std = np.sum(mp**2) + np.sum((sqrtm(sp).real - np.eye(6)) ** 2)
    assert wasserstein2(g(mp, sp), standard_normal(6)) ** 2 == pytest.approx(to_std, rel=1e-9)


def test_streamed_stats_match_numpy_float64() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5000, 6)) * [1, 2, 3, 4, 5, 6] + 100).astype(np.float32)
    s = GaussianStats.fit(iter([x[:1234], x[1234:]]), sample_rows=300)
    assert np.allclose(s.mean, x.astype(np.float64).mean(0), atol=1e-9)
    assert np.allclose(s.cov, np.cov(x.astype(np.float64).T, bias=True), rtol=1e-9, atol=1e-9)
    assert s.sample.shape == (300, 6) and s.n == 5000
    # every sampled row is a real row
    rows = {r.tobytes() for r in x.astype(np.float64)}
    assert all(r.tobytes() in rows for r in s.sample)


def test_shared_constant_dimension_is_dropped_not_fatal() -> None:
    """MiniLM-like: one dimension is the same constant on both sides -> KL over the other dims."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((4000, 4)) * [1, 2, 1, 1]
    b = rng.standard_normal((4000, 4)) + 0.5
    a[:, 3] = b[:, 3] = 0.7
    sa, sb = GaussianStats.fit(a), GaussianStats.fit(b)
    kl, why = kl_divergence(sa, sb)
    ref = kl_divergence(GaussianStats.fit(a[:, :3]), GaussianStats.fit(b[:, :3]))[0]
    assert why is None and kl == pytest.approx(ref, rel=1e-8)
    assert bhattacharyya(sa, sb)[0] == pytest.approx(
        bhattacharyya(GaussianStats.fit(a[:, :3]), GaussianStats.fit(b[:, :3]))[0]
    )


def test_undefined_divergences_say_why() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2000, 3)), rng.standard_normal((2000, 3))
    a[:, 2] = 0.0  # constant in A only
    out = gaussian_distances(GaussianStats.fit(a), GaussianStats.fit(b))
    assert out["kl_a_b"] is None and "A is constant along a direction in which B varies" in out["kl_a_b_undefined"]
    assert out["kl_b_a"] is None and "rank 2 of 3" in out["kl_b_a_undefined"]
    assert out["bhattacharyya"] is None and "\n" not in out["bhattacharyya_undefined"]
    assert math.isfinite(out["w2"])
    # same constant dimension but at different values: disjoint supports
    b2 = rng.standard_normal((2000, 3))
    b2[:, 2] = 1.0
    bd, why = bhattacharyya(GaussianStats.fit(a), GaussianStats.fit(b2))
    assert bd is None and "means differ" in why


def test_whitening_closed_form_makes_a_standard() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3000, 5)) @ random_spd(rng, 5) + 3
    s = GaussianStats.fit(x)
    w = whitened(s, s)
    assert np.allclose(w.cov, np.eye(5), atol=1e-9) and np.allclose(w.mean, 0, atol=1e-9)
    assert wasserstein2(w, standard_normal(5)) < 1e-6
    report = drift_report(s, GaussianStats.fit(rng.standard_normal((3000, 5))))
    assert report["whitened_on_a"]["w2_a_to_standard"] < 1e-6
    assert report["w2_a_to_standard"] > 1
    assert report["whitened_on_a"]["anisotropy_a"] < 1e-6 < report["anisotropy_a"]
    assert "\n" not in report["recommendation"]


def test_anisotropy_is_scale_free() -> None:
    from simtool.drift import anisotropy

    assert anisotropy(g([0, 0, 0], 5 * np.eye(3))) == pytest.approx(0.0, abs=1e-12)
    spread = g([0, 0], np.diag([1.0, 0.0]))  # all variance in one of two directions: ‖(√2, 0) − 1‖ / √2
    assert anisotropy(spread) == pytest.approx(math.sqrt(((math.sqrt(2) - 1) ** 2 + 1) / 2))
    assert anisotropy(g([0, 0], np.diag([3.0, 0.0]))) == pytest.approx(anisotropy(spread))


def test_mean_pair_cosine() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 16)) + 3.0  # all in one cone
    s = GaussianStats.fit(x)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    brute = (u @ u.T)[~np.eye(2000, dtype=bool)].mean()
    assert s.mean_pair_cosine(pairs=200_000) == pytest.approx(brute, abs=0.005)


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SimtoolError, match="different dimensions: 3 and 4"):
        gaussian_distances(g([0, 0, 0], np.eye(3)), g([0] * 4, np.eye(4)))
    with pytest.raises(SimtoolError, match="at least 2 vectors"):
        GaussianStats.fit(np.zeros((1, 3)))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(8)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, rng.standard_normal((500, 4)).astype(np.float32))
    np.save(b, (rng.standard_normal((500, 4)) * 2).astype(np.float32))
    code, out, err = run_cli(capsys, "drift", str(a), str(b), "--vectors", "--json")
    assert code == 0, err
    got = json.loads(out)
    ref = gaussian_distances(GaussianStats.fit(np.load(a)), GaussianStats.fit(np.load(b)))
    assert got["kl_a_b"] == pytest.approx(ref["kl_a_b"]) and got["n_a"] == 500
    code, out, err = run_cli(capsys, "drift", str(a), str(b), "--vectors")
    assert code == 0 and "KL(A||B)" in out and "W2 (Frechet)" in out
    bad = tmp_path / "c.npy"
    np.save(bad, np.zeros((10, 5), dtype=np.float32))
    empty, junk = tmp_path / "e.npy", tmp_path / "j.npy"
    np.save(empty, np.zeros((0, 4), dtype=np.float32))
    junk.write_bytes(b"not numpy")
    for other, message in (
        (bad, "different dimensions"),
        (empty, "non-empty"),
        (junk, "cannot read"),
        (tmp_path / "no.npy", "cannot read"),
    ):
        code, out, err = run_cli(capsys, "drift", str(a), str(other), "--vectors")
        assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.timeout(120)
def test_cli_encodes_corpus_files_with_the_model(
    tmp_path: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import WORDS

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(f"{WORDS[i % 40]} {WORDS[(3 * i) % 40]} {WORDS[(7 * i) % 40]}\n" for i in range(200)))
    b.write_text("".join(f"{WORDS[55 + i % 40]} {WORDS[55 + (5 * i) % 40]}\n" for i in range(150)))
    code, out, err = run_cli(capsys, "drift", str(a), str(b), "--model", str(tiny_st), "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["n_a"] == 200 and got["n_b"] == 150 and got["dim"] == 32 and got["w2"] > 0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, out, err = run_cli(capsys, "drift", str(a), str(empty), "--model", str(tiny_st))
    assert code == 2 and err.count("\n") == 1 and "empty.txt" in err, err


@pytest.mark.timeout(120)
def test_index_directory_uses_its_stored_vectors(
    tmp_path: Path, tiny_st: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtool.index import build_index, live_vectors

    index = tmp_path / "index"
    build_index(small_corpus, index, model=str(tiny_st), progress=False)
    stored = np.asarray(live_vectors(index))
    other = tmp_path / "other.npy"
    np.save(other, stored[::-1] * 2)
    code, out, err = run_cli(capsys, "drift", str(index), str(other), "--vectors", "--json")
    assert code == 0, err
    ref = gaussian_distances(GaussianStats.fit(stored), GaussianStats.fit(stored[::-1] * 2))
    assert json.loads(out)["w2"] == pytest.approx(ref["w2"]) and json.loads(out)["n_a"] == len(stored)
