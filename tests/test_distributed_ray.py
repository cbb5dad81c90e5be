"""Ray Data encoding against the in-process encoder, on a real local Ray cluster (``num_cpus=2``)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WORDS, write_jsonl

pytestmark = pytest.mark.slow  # starts a local Ray cluster (a few processes, ~10 s)


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
