"""Whitening and projection applied to an index: rebuild, query reduction, add, torch backend, CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from simtool.errors import IndexDirError, SimtoolError
from simtool.index import add_to_index, build_index, index_info, live_vectors, reduce_index
from simtool.manifest import Manifest
from simtool.reduce import Whitening, load_reducer
from simtool.reduce.workflows import project_index, projection_dim, whiten_index
from simtool.retriever import Retriever
from tests.conftest import WORDS, committed_state, run_cli, search_rows, write_jsonl


@pytest.fixture
def index_dir(tmp_path: Path, tiny_st: Path) -> Path:
    rng = random.Random(3)
    rows = [{"_id": f"d{i}", "text": " ".join(rng.choices(WORDS, k=10))} for i in range(300)]
    out = tmp_path / "idx"
    build_index(write_jsonl(tmp_path / "c.jsonl", rows), out, model=str(tiny_st), progress=False)
    return out


def test_whiten_index_rebuilds_at_k_dims_and_reduces_queries(index_dir: Path) -> None:
    raw = np.asarray(live_vectors(index_dir))
    whitening, manifest = whiten_index(index_dir, dim=16, power=0.5, progress=False)
    assert (manifest.dim, manifest.model.dim, manifest.count) == (16, 32, 300)
    assert [r["kind"] for r in manifest.reducers] == ["whitening"] and manifest.reducers[0]["out_dim"] == 16
    np.testing.assert_array_equal(np.asarray(live_vectors(index_dir)), raw)  # the raw vectors are kept
    reference = Whitening(16, 0.5).fit(raw.astype(np.float64))
    np.testing.assert_allclose(whitening.transform(raw), reference.transform(raw), atol=1e-4)
    with Retriever.load(index_dir) as r:
        q = r.encode(["the red cat", "python code"])
        assert q.shape == (2, 16)
        np.testing.assert_allclose(q, whitening.transform(r.encoder.encode(["the red cat", "python code"])), atol=1e-5)
        scores, rows = search_rows(r.search_vectors(q, 5))
        exact = q.astype(np.float64) @ whitening.transform(raw).astype(np.float64).T  # brute force, reduced space
        np.testing.assert_array_equal(rows, np.argsort(-exact, axis=1)[:, :5])
        np.testing.assert_allclose(scores, np.sort(exact, axis=1)[:, ::-1][:, :5], atol=1e-5)
        _, torch_rows = search_rows(Retriever.load(index_dir, backend="torch", device="cpu").search_vectors(q, 5))
        np.testing.assert_array_equal(torch_rows, rows)
    assert index_info(index_dir, verify=True)["verified"]


def test_add_after_whitening_reduces_the_new_documents(index_dir: Path, tmp_path: Path) -> None:
    whiten_index(index_dir, dim=12, power=0.1, progress=False)
    add_to_index(write_jsonl(tmp_path / "n.jsonl", [{"_id": "new", "text": "zebra"}]), index_dir, progress=False)
    with Retriever.load(index_dir) as r:
        (hit,) = r.search("zebra", k=1)
    assert hit.id == "new" and hit.score == pytest.approx(1.0, abs=1e-4)
    assert Manifest.load(index_dir).count == 301


def test_rewhitening_refits_from_raw_and_projection_replaces_it(index_dir: Path) -> None:
    whiten_index(index_dir, dim=16, progress=False)
    _, again = whiten_index(index_dir, dim=8, power=0.0, progress=False)
    assert again.dim == 8 and len(again.reducers) == 1 and again.reducers[0]["in_dim"] == 32
    projection, projected = project_index(index_dir, dim=10, seed=5, progress=False)
    assert projected.dim == 10 and [r["kind"] for r in projected.reducers] == ["projection"]
    stored = load_reducer(index_dir / projected.reducers[0]["file"])
    np.testing.assert_array_equal(stored.weight, projection.weight)


def test_reducer_from_another_model_is_refused(index_dir: Path) -> None:
    raw = np.asarray(live_vectors(index_dir))
    foreign = Whitening(8).fit(raw, source_fingerprint="not-this-model")
    with pytest.raises(IndexDirError, match="fitted on vectors of model not-this-model"):
        reduce_index(foreign, index_dir, progress=False)
    m = Manifest.load(index_dir)
    assert m.reducers == [] and m.dim == 32  # untouched


def test_tuning_refuses_the_test_split(index_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\nthe cat\ta cat\t4.5\n")
    with pytest.raises(SimtoolError, match="tuning on the test split would leak"):
        whiten_index(index_dir, dim=8, power="auto", tune_on=pairs, tune_split="test", progress=False)


def test_cli_whiten_project_and_dims(
    index_dir: Path, tmp_path: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "whiten", "--dim", "16", "--index-dir", str(index_dir), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["kind"], result["in_dim"], result["out_dim"], result["power"]) == ("whitening", 32, 16, 0.5)
    code, out, _ = run_cli(capsys, "search", "red cat", "--index-dir", str(index_dir), "-k", "3", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 3

    code, out, _ = run_cli(capsys, "project", "--dim", "10", "--index-dir", str(index_dir), "--json")
    assert code == 0 and json.loads(out)["out_dim"] == 10
    # 8.33 ln 300 = 48 dims, more than the tiny model's 32: auto says there is nothing to gain
    code, _, err = run_cli(capsys, "project", "--dim", "auto", "--index-dir", str(index_dir))
    assert code == 2 and "asks for 48 dims for 300 vectors" in err
    assert projection_dim("auto", 300, 384) == 48 and projection_dim("auto", 100_000, 384) == 96

    corpus = tmp_path / "fit.txt"
    corpus.write_text("\n".join(" ".join(random.Random(i).choices(WORDS, k=8)) for i in range(200)))
    code, out, err = run_cli(
        capsys,
        "whiten",
        "--model",
        str(tiny_st),
        "--corpus",
        str(corpus),
        "--dim",
        "8",
        "--power",
        "0.1",
        "--output",
        str(tmp_path / "model"),
        "--json",
    )
    assert code == 0, err
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(["a cat"]).shape == (1, 8)

    code, out, _ = run_cli(capsys, "dims", "--n-vectors", "100000", "--json")
    assert json.loads(out)["entropy_dim"] == 96 and json.loads(out)["jl_dim"] == 27632
    code, out, _ = run_cli(capsys, "dims", "--n-vectors", "5000000")
    assert code == 0 and "128 dims" in out


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["whiten", "--dim", "64"], r"--dim 64 is larger than the vectors' dimension 32"),
        (["whiten", "--dim", "-3"], r"--dim must be a positive integer or 'auto'"),
        (["whiten", "--dim", "16", "--power", "strong"], r"--power must be a number or 'auto'"),
        (["whiten", "--dim", "16", "--power", "auto"], r"--dim/--power auto need --tune-on"),
        (["whiten", "--dim", "16", "--corpus", "x.txt"], r"model mode needs --corpus FILE and --output DIR"),
        (["project", "--dim", "zero"], r"--dim must be a positive integer or 'auto'"),
        (["dims", "--n-vectors", "1"], r"--n-vectors must be at least 2"),
    ],
)
def test_cli_bad_reduce_arguments(
    index_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], pattern: str
) -> None:
    before = committed_state(index_dir)
    extra = ["--index-dir", str(index_dir)] if args[0] != "dims" else []
    code, _, err = run_cli(capsys, *args, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    import re

    assert re.search(pattern, err), err
    assert committed_state(index_dir) == before
