"""Ray Data encoding against the in-process encoder, on a real local Ray cluster (``num_cpus=2``)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WORDS, run_cli, write_jsonl


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _corpus(directory: Path, n_files: int = 2, per_file: int = 150) -> list[Path]:
    rng = random.Random(1)
    paths = []
    for f in range(n_files):
        rows = [
            {"_id": f"f{f}-{i}", "title": rng.choice(WORDS), "text": " ".join(rng.choices(WORDS, k=rng.randint(3, 40)))}
            for i in range(per_file)
        ]
        paths.append(write_jsonl(directory / f"part{f}.jsonl", rows))
    return paths


@pytest.mark.slow  # starts a local Ray cluster (a few processes, ~10 s)
@pytest.mark.timeout(180)
def test_ray_encode_two_workers_equals_in_process(ray_cluster: None, tiny_st: Path, tmp_path: Path) -> None:
    from simtool.corpus import read_documents
    from simtool.distributed import RayOptions, encode_file_ray
    from simtool.encoder import encode_file, load_encoder

    paths = _corpus(tmp_path)
    docs = [d for p in paths for d in read_documents(p)]
    encoder = load_encoder(tiny_st, device="cpu")
    ids_path = encode_file(lambda: iter(docs), len(docs), tmp_path / "single.npy", encoder, progress=False)

    result = encode_file_ray(
        paths, tmp_path / "ray.npy", model=str(tiny_st), options=RayOptions(workers=2, batch_size=64), progress=False
    )
    single, distributed = np.load(tmp_path / "single.npy"), np.load(tmp_path / "ray.npy")
    assert result["n"] == len(docs) == distributed.shape[0]
    assert json.loads(Path(result["ids"]).read_text()) == json.loads(ids_path.read_text())
    np.testing.assert_allclose(distributed, single, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cli_encode_ray_writes_the_in_process_output(
    ray_cluster: None, tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path, n_files=1, per_file=80)[0]
    common = ["encode", str(corpus), "--model", str(tiny_st), "--json"]
    code, out, err = run_cli(capsys, *common, "-o", str(tmp_path / "single.npy"))
    assert code == 0, err
    code, out, err = run_cli(capsys, *common, "-o", str(tmp_path / "ray.npy"), "--ray", "local", "--workers", "2")
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 80 and result["workers"] == 2
    np.testing.assert_allclose(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "single.npy"), atol=1e-6, rtol=0)
    assert (tmp_path / "ray.ids.json").read_text() == (tmp_path / "single.ids.json").read_text()


@pytest.mark.timeout(60)
def test_cli_workers_without_ray_is_one_line_error(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "encode", str(small_corpus), "-o", str(tmp_path / "v.npy"), "--workers", "2")
    assert code == 2 and err.count("\n") == 1 and "--ray" in err
    assert not (tmp_path / "v.npy").exists()


@pytest.mark.timeout(60)
def test_ray_missing_names_the_extra(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as without the extra
    code, _, err = run_cli(capsys, "encode", str(small_corpus), "-o", str(tmp_path / "v.npy"), "--ray", "local")
    assert code == 2 and err.count("\n") == 1 and "simtool[ray]" in err
    assert not (tmp_path / "v.npy").exists()


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"),
    [(2, None, (2, 0.875)), (2, 1, (1, 1.0)), (16, 4, (4, 1.0)), (1, None, (1, 0.75))],
)
def test_actor_plan_leaves_a_cpu_slot_for_reads(cpus: int, workers: int | None, expected: tuple[int, float]) -> None:
    from simtool.distributed import RayOptions
    from simtool.distributed.ray_encode import READ_CPUS

    planned = RayOptions(workers=workers).plan(cpus, 0)
    assert planned == expected and planned[0] * planned[1] <= cpus - READ_CPUS


def test_actor_plan_rejects_workers_that_hold_every_cpu() -> None:
    from simtool.distributed import RayOptions
    from simtool.errors import SimtoolError

    with pytest.raises(SimtoolError, match="cpus_per_worker"):
        RayOptions(workers=2, cpus_per_worker=1.0).plan(2, 0)
