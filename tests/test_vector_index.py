"""FAISS and torch search against brute-force numpy; the auto factory rule; GPU dispatch (mocked GPU)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from simtool import vector_index as vi
from simtool.errors import SimtoolError


def _data(n: int = 3000, d: int = 24, nq: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((nq, d)).astype(np.float32)


def _brute_force(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "ip":
        s = q64 @ x64.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    else:
        s = ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
        order = np.argsort(s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_and_torch_agree_with_brute_force(metric: str) -> None:
    x, q = _data()
    ref_s, ref_i = _brute_force(x, q, 10, metric)
    index = vi.fill_index(vi.new_faiss_index("Flat", x.shape[1], metric), x)
    for searcher in (vi.FaissSearcher(index, {}), vi.TorchExactSearcher(x, metric, "cpu", block_rows=257)):
        s, i = searcher.search(q, 10)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_k_larger_than_corpus_pads_like_faiss(metric: str) -> None:
    x, q = _data(n=5)
    index = vi.fill_index(vi.new_faiss_index("Flat", x.shape[1], metric), x)
    fs, fi = vi.FaissSearcher(index, {}).search(q, 8)
    ts, ti = vi.TorchExactSearcher(x, metric, "cpu").search(q, 8)
    np.testing.assert_array_equal(ti, fi)
    assert (ti[:, 5:] == -1).all()
    np.testing.assert_allclose(ts[:, :5], fs[:, :5], rtol=1e-5, atol=1e-4)


def test_ivf_trains_on_a_sample_and_honours_nprobe() -> None:
    x, q = _data(n=4000)
    index = vi.fill_index(vi.new_faiss_index("IVF16,Flat", x.shape[1], "ip"), x)
    assert index.ntotal == 4000
    vi.FaissSearcher(index, {"nprobe": 16})
    assert faiss.extract_index_ivf(index).nprobe == 16
    # all lists probed = exact search
    _, i = vi.FaissSearcher(index, {"nprobe": 16}).search(q, 5)
    np.testing.assert_array_equal(i, _brute_force(x, q, 5, "ip")[1])


def test_auto_factory_rule() -> None:
    gib = 2**30
    assert vi.choose_factory(99_999, 384, 64 * gib) == "Flat"
    assert vi.choose_factory(1_000_000, 384, 64 * gib) == "HNSW32,Flat"
    # 1M x 384 needs 1M * (1536 + 272) * 1.1 = 1.99e9 bytes: just over a 1.8 GiB budget
    assert vi.choose_factory(1_000_000, 384, int(1.8 * gib)) == "IVF4096,PQ96"  # 4*sqrt(1e6) = 4000 -> 4096
    assert vi.choose_factory(200_000, 384, gib // 8) == "IVF2048,PQ96"  # 4*sqrt(2e5) = 1789 -> 2048
    assert vi.choose_factory(1_000_000, 100, gib // 4) == "IVF4096,PQ25"
    assert vi.default_search_params("IVF4096,PQ96") == {"nprobe": 128}
    assert vi.default_search_params("IVF128,Flat") == {"nprobe": 8}
    assert vi.default_search_params("HNSW32,Flat") == {"efSearch": 64}
    for factory in ("IVF4096,PQ96", "HNSW32,Flat", "Flat"):
        vi.new_faiss_index(factory, 384, "ip")  # every rule output is a valid factory string


def test_unknown_factory_and_metric_are_one_line_errors() -> None:
    with pytest.raises(SimtoolError, match=r"factory='Bogus9' is unknown or invalid") as e:
        vi.new_faiss_index("Bogus9", 16, "ip")
    assert "\n" not in str(e.value)
    with pytest.raises(SimtoolError, match="metric must be one of"):
        vi.new_faiss_index("Flat", 16, "cosine")
    with pytest.raises(SimtoolError, match="cannot train"):
        vi.fill_index(vi.new_faiss_index("IVF64,Flat", 16, "ip"), _data(n=20, d=16)[0])


class _FakeGpuIndex:
    """Stands in for a faiss GPU index: records calls, answers from the wrapped CPU index."""

    def __init__(self, cpu: object) -> None:
        self.cpu, self.calls = cpu, 0

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return self.cpu.search(q, k)


def test_gpu_dispatch_and_large_k_fallback_mocked_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU exists here: faiss's GPU entry points are replaced to check the routing only."""
    fakes: list[_FakeGpuIndex] = []
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(
        faiss, "index_cpu_to_all_gpus", lambda idx: fakes.append(_FakeGpuIndex(idx)) or fakes[-1], raising=False
    )
    x, q = _data(n=3000)
    index = vi.fill_index(vi.new_faiss_index("Flat", x.shape[1], "ip"), x, gpu=False)
    searcher = vi.FaissSearcher(index, {})
    assert searcher.backend == "faiss-gpu"
    searcher.search(q, 10)
    assert fakes[-1].calls == 1
    _, rows = searcher.search(q, vi.GPU_MAX_K + 1)  # beyond faiss-gpu's k limit: served by the CPU index
    assert fakes[-1].calls == 1 and rows.shape == (len(q), vi.GPU_MAX_K + 1)
