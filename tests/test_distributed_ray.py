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
    # a lone actor takes every spare CPU (its torch threads follow), or it would encode on one core of many
    [(2, None, (2, 0.875)), (2, 1, (1, 1.75)), (16, 4, (4, 3.9375)), (1, None, (1, 0.75))],
)
def test_actor_plan_leaves_a_cpu_slot_for_reads(cpus: int, workers: int | None, expected: tuple[int, float]) -> None:
    from simtool.distributed import RayOptions
    from simtool.distributed.ray_encode import READ_CPUS

    planned = RayOptions(workers=workers).plan(cpus, 0)
    assert planned == expected and planned[0] * planned[1] <= cpus - READ_CPUS


def test_actors_get_a_concrete_backend_resolved_on_the_driver() -> None:
    from simtool.backends import BACKENDS
    from simtool.distributed import RayOptions
    from simtool.distributed.ray_encode import encoded_dataset, resolve_backend
    from simtool.errors import SimtoolError

    assert resolve_backend(None, "torch-bf16", RayOptions()) == "torch-bf16"
    assert resolve_backend(None, "auto", RayOptions()) in BACKENDS
    with pytest.raises(SimtoolError, match="auto"):
        encoded_dataset(None, None, None, None, options=RayOptions(), backend="auto")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_ray_backend_reaches_the_actors(
    ray_cluster: None, tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtool.backends.compat import tolerance
    from simtool.manifest import Manifest

    corpus = _corpus(tmp_path, n_files=1, per_file=80)[0]
    common = ["--model", str(tiny_st), "--backend", "torch-bf16", "--json"]
    code, out, err = run_cli(capsys, "encode", str(corpus), *common, "-o", str(tmp_path / "single.npy"))
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "encode", str(corpus), *common, "-o", str(tmp_path / "ray.npy"), "--ray", "local", "--workers", "2"
    )
    assert code == 0, err
    assert json.loads(out)["backend"] == "torch-bf16"
    single, ray = np.load(tmp_path / "single.npy"), np.load(tmp_path / "ray.npy")
    cos = (single * ray).sum(1) / np.linalg.norm(single, axis=1) / np.linalg.norm(ray, axis=1)
    assert float((1 - cos).max()) <= tolerance("torch-bf16")
    # and a bf16 fp32 mix-up would show: the fp32 vectors differ from the bf16 ones by more than rounding
    code, out, err = run_cli(capsys, "encode", str(corpus), "--model", str(tiny_st), "--backend", "torch", "--json",
                             "-o", str(tmp_path / "fp32.npy"))  # fmt: skip
    assert code == 0, err
    assert np.abs(np.load(tmp_path / "fp32.npy") - ray).max() > np.abs(single - ray).max()

    index = tmp_path / "idx"
    code, out, err = run_cli(capsys, "index", "build", str(corpus), "--index-dir", str(index), *common, "--no-gpu",
                             "--ray", "auto", "--workers", "2")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["ray"]["backend"] == "torch-bf16"
    assert Manifest.load(index).backend["name"] == "torch-bf16"
    more = write_jsonl(tmp_path / "more.jsonl", [{"_id": "new-1", "text": "a dog runs"}])
    code, out, err = run_cli(capsys, "index", "add", str(more), "--index-dir", str(index), "--json",
                             "--backend", "torch-bf16", "--ray", "auto", "--workers", "1")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["backend"] == "torch-bf16"


def test_actor_plan_rejects_workers_that_hold_every_cpu() -> None:
    from simtool.distributed import RayOptions
    from simtool.errors import SimtoolError

    with pytest.raises(SimtoolError, match="cpus_per_worker"):
        RayOptions(workers=2, cpus_per_worker=1.0).plan(2, 0)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_add_commits_once_and_equals_in_process_add(ray_cluster: None, tiny_st: Path, tmp_path: Path) -> None:
    import shutil

    from simtool.corpus import read_documents
    from simtool.distributed import RayOptions
    from simtool.distributed.ray_index import add_to_index_ray
    from simtool.index import Index, add_to_index, build_index, live_vectors
    from simtool.retriever import Retriever

    first, *more = _corpus(tmp_path, n_files=3, per_file=100)
    build_index(first, tmp_path / "ray-idx", model=str(tiny_st), factory="Flat", progress=False)
    shutil.copytree(tmp_path / "ray-idx", tmp_path / "one-idx")
    combined = write_jsonl(
        tmp_path / "combined.jsonl",
        [{"_id": d.id, "title": d.title, "text": d.text} for p in more for d in read_documents(p)],
    )
    add_to_index(combined, tmp_path / "one-idx", progress=False)
    before = Index(tmp_path / "ray-idx").generation

    done = add_to_index_ray(more, tmp_path / "ray-idx", options=RayOptions(workers=2, batch_size=50))
    assert done["added"] == 200 and done["parts"] >= 2  # at least one part per file
    assert done["generation"] == before + 1  # every part in one commit
    np.testing.assert_allclose(live_vectors(tmp_path / "ray-idx"), live_vectors(tmp_path / "one-idx"), atol=1e-6)
    queries = np.asarray(live_vectors(tmp_path / "one-idx"))[::37]
    # Both indexes hold the first file's segment then the added one, so hits are comparable by (segment, row).
    (ray_scores, ray_hits), (one_scores, one_hits) = (
        Retriever.load(tmp_path / d, load_model=False).search_vectors(queries, k=5) for d in ("ray-idx", "one-idx")
    )
    assert ray_hits == one_hits
    np.testing.assert_allclose(ray_scores, one_scores, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_add_duplicate_id_across_files_fails_before_commit(
    ray_cluster: None, tiny_st: Path, tmp_path: Path
) -> None:
    from simtool.distributed import RayOptions
    from simtool.distributed.ray_index import add_to_index_ray
    from simtool.errors import SimtoolError
    from simtool.index import Index, build_index

    first, second = _corpus(tmp_path, n_files=2, per_file=30)
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"_id": "f1-7", "text": "a cat"}])
    build_index(first, tmp_path / "idx", model=str(tiny_st), factory="Flat", progress=False)
    before = Index(tmp_path / "idx").manifest
    with pytest.raises(SimtoolError, match="duplicate id 'f1-7'") as err:
        add_to_index_ray([second, clash], tmp_path / "idx", options=RayOptions(workers=1))
    assert "\n" not in str(err.value)
    after = Index(tmp_path / "idx").manifest
    assert (after.generation, after.count) == (before.generation, before.count)


def _ids_and_scores(index_dir: Path, queries: np.ndarray, k: int = 5) -> tuple[list[list[str]], np.ndarray]:
    from simtool.retriever import Retriever

    with Retriever.load(index_dir, load_model=False) as r:
        scores, refs = r.search_vectors(queries, k=k)
        return [[h.id for h in row] for row in r.hits_for(scores, refs)], scores


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_cli_index_build_ray_equals_in_process_build(
    ray_cluster: None, tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], factory: str
) -> None:
    from simtool.index import live_vectors

    paths = [str(p) for p in _corpus(tmp_path, n_files=2, per_file=200)]
    common = ["--model", str(tiny_st), "--factory", factory, "--no-gpu", "--json"]
    code, out, err = run_cli(capsys, "index", "build", *paths, "--index-dir", str(tmp_path / "one"), *common)
    assert code == 0, err
    code, out, err = run_cli(
        capsys,
        "index",
        "build",
        *paths,
        "--index-dir",
        str(tmp_path / "ray"),
        *common,
        "--ray",
        "auto",
        "--workers",
        "2",
        "--segment-rows",
        "150",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["count"] == 400 and report["ray"]["workers"] == 2
    # streamed into three segments; an IVF factory trained once, on the in-process build's sample
    assert [s["count"] for s in report["segments"]] == [150, 150, 100]
    if factory != "Flat":
        assert {s["trained"] for s in report["segments"]} == {report["trained"]["file"]}
    one, ray = live_vectors(tmp_path / "one"), live_vectors(tmp_path / "ray")
    np.testing.assert_allclose(ray, one, atol=1e-6, rtol=0)
    queries = np.asarray(one)[::23]
    (one_ids, one_scores), (ray_ids, ray_scores) = (_ids_and_scores(tmp_path / d, queries) for d in ("one", "ray"))
    assert ray_ids == one_ids
    np.testing.assert_allclose(ray_scores, one_scores, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_index_build_ray_duplicate_id_leaves_no_index(
    ray_cluster: None, tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _corpus(tmp_path, n_files=2, per_file=30)
    clash = write_jsonl(tmp_path / "clash.jsonl", [{"_id": "f0-3", "text": "a dog"}])
    target = tmp_path / "idx"
    code, _out, err = run_cli(
        capsys, "index", "build", str(first), str(clash), str(second), "--index-dir", str(target),
        "--model", str(tiny_st), "--ray", "auto", "--workers", "1",
    )  # fmt: skip
    # Ray's C++ core may log its own lines; simtool's error is one line, and the last.
    assert code != 0 and err.strip().splitlines()[-1].startswith("simtool: error: duplicate id 'f0-3'")
    assert not target.exists() and not list(tmp_path.glob(".idx*"))  # no index and no staging left behind


def _encoder_actor_pids() -> list[int]:
    """Pids of live Ray encoder actors, by the process title Ray gives them (``ray::MapWorker(...)``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"MapWorker(MapBatches(EncoderActor))" in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_build_survives_a_killed_worker(ray_cluster: None, tiny_st: Path, tmp_path: Path) -> None:
    import os
    import signal
    import threading
    import time

    from simtool.corpus import read_documents
    from simtool.distributed import RayOptions
    from simtool.distributed.ray_index import build_index_ray
    from simtool.index import build_index, live_vectors
    from simtool.retriever import Retriever

    paths = _corpus(tmp_path, n_files=2, per_file=1500)
    docs = [d for p in paths for d in read_documents(p)]
    build_index(docs, tmp_path / "one", model=str(tiny_st), factory="Flat", progress=False)
    outcome: dict[str, object] = {}

    def build() -> None:
        try:
            outcome["done"] = build_index_ray(
                paths,
                tmp_path / "ray",
                model=str(tiny_st),
                factory="Flat",
                options=RayOptions(workers=2, batch_size=20),
            )
        except BaseException as e:  # surfaced by the assertion below
            outcome["error"] = e

    worker = threading.Thread(target=build)
    worker.start()
    killed = None
    deadline = time.monotonic() + 120
    while worker.is_alive() and killed is None and time.monotonic() < deadline:
        pids = _encoder_actor_pids()
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    worker.join(240)
    assert killed is not None, "no encoder actor was seen to kill"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["done"]["added"] == 3000  # type: ignore[index]
    with Retriever.load(tmp_path / "ray", load_model=False) as r:
        vectors, ids = r.live_vectors()
    assert len(ids) == len(set(ids)) == 3000  # each document exactly once
    assert sorted(ids) == sorted(f"f{f}-{i}" for f in range(2) for i in range(1500))
    np.testing.assert_allclose(vectors, live_vectors(tmp_path / "one"), atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_chunk_mean_equals_in_process_and_chunk_max_is_refused(
    ray_cluster: None, tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Windows of 8 tokens: most of these 3-40 word texts have several, so a truncating actor would differ."""
    from simtool.index import live_vectors
    from simtool.manifest import Manifest

    paths = [str(p) for p in _corpus(tmp_path, n_files=2, per_file=60)]
    chunked = ["--model", str(tiny_st), "--long-text", "chunk-mean", "--chunk-tokens", "8", "--chunk-overlap", "2"]
    encode = ["encode", paths[0], *chunked, "--json"]
    code, out, err = run_cli(capsys, *encode, "-o", str(tmp_path / "single.npy"))
    assert code == 0, err
    code, out, err = run_cli(capsys, *encode, "-o", str(tmp_path / "ray.npy"), "--ray", "auto", "--workers", "2")
    assert code == 0, err
    assert json.loads(out)["long_text"] == "chunk-mean"
    single, ray = np.load(tmp_path / "single.npy"), np.load(tmp_path / "ray.npy")
    np.testing.assert_allclose(ray, single, atol=1e-6, rtol=0)
    code, _, err = run_cli(capsys, "encode", paths[0], "--model", str(tiny_st), "-o", str(tmp_path / "t.npy"))
    assert code == 0, err
    assert np.abs(np.load(tmp_path / "t.npy") - single).max() > 1e-3  # the windows matter on this corpus

    build = ["index", "build", paths[0], *chunked, "--no-gpu", "--json"]
    for name, extra in (("one", []), ("ray", ["--ray", "auto", "--workers", "2"])):
        code, _, err = run_cli(capsys, *build, "--index-dir", str(tmp_path / name), *extra)
        assert code == 0, err
        add = ["index", "add", paths[1], "--index-dir", str(tmp_path / name), "--json", *extra]
        code, _, err = run_cli(capsys, *add)
        assert code == 0, err
    assert Manifest.load(tmp_path / "ray").long_text == Manifest.load(tmp_path / "one").long_text != {}
    np.testing.assert_allclose(live_vectors(tmp_path / "ray"), live_vectors(tmp_path / "one"), atol=1e-6, rtol=0)

    maxed = ["--model", str(tiny_st), "--long-text", "chunk-max", "--ray", "auto", "--json"]
    code, out, err = run_cli(capsys, "index", "build", paths[0], "--index-dir", str(tmp_path / "max"), *maxed)
    assert code == 2 and out == "" and not (tmp_path / "max").exists()
    assert err.startswith("simtool: error: --long-text chunk-max is not supported on Ray yet (")
    assert err.count("\n") == 1
