"""``--backend`` on every command that encodes (issue 16): the choice reaches the encoder (checked on the vectors
and on what the JSON outputs and the manifest record), and another backend on an existing index is held to the
index's tolerance (:mod:`simtool.backends.compat`). Tiny models built in the tests; ``torch-bf16`` stands in for a
non-exact backend because it needs no extra and no conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simtool.backends import Capabilities, backend_info, compat
from simtool.encoder import load_encoder
from simtool.errors import SimtoolError
from simtool.protocols import encoder_info
from tests.conftest import WORDS, committed_state, run_cli, segment_file, write_jsonl

BF16 = "torch-bf16"


def _texts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=10)) for _ in range(n)]


def _corpus(path: Path, n: int = 40, seed: int = 0, prefix: str = "d") -> Path:
    return write_jsonl(path, [{"_id": f"{prefix}{i}", "text": t} for i, t in enumerate(_texts(n, seed))])


def _build(capsys: pytest.CaptureFixture[str], model: Path, corpus: Path, index: Path, backend: str) -> dict:
    code, out, err = run_cli(
        capsys,
        *("index", "build", str(corpus), "--index-dir", str(index), "--model", str(model)),
        *("--backend", backend, "--no-gpu", "--json"),
    )
    assert code == 0, err
    return json.loads(out)


def _encode(model: Path, backend: str, texts: list[str]) -> np.ndarray:
    return load_encoder(model, device="cpu", backend=backend).encode(texts, batch_size=8)


def _one_line_error(code: int, err: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simtool: error: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_warned", set())  # "warn once" is per process: each test sees its own


@pytest.mark.timeout(120)
def test_index_build_records_the_backend_that_encoded(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path
) -> None:
    corpus, index = _corpus(tmp_path / "c.jsonl"), tmp_path / "idx"
    info = _build(capsys, tiny_st, corpus, index, BF16)
    expected = backend_info(load_encoder(tiny_st, device="cpu", backend=BF16))
    assert info["backend"]["name"] == BF16 and info["backend"]["fingerprint"] == expected["fingerprint"]
    on_disk = json.loads((index / "manifest.json").read_text())["backend"]
    assert on_disk["name"] == BF16 and on_disk["precision"] == "bfloat16" and on_disk["tolerance"] == 5e-3
    # the stored vectors are bf16's, not fp32's: the flag reached the encoder
    stored = np.load(segment_file(index, "vectors.npy"))
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    bf16, fp32 = _encode(tiny_st, BF16, texts), _encode(tiny_st, "torch", texts)
    gap = np.abs(stored - bf16).max()
    assert gap <= 1e-6 < np.abs(stored - fp32).max()

    code, out, err = run_cli(capsys, "index", "info", "--index-dir", str(index), "--backend", "torch", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["backend"]["name"] == BF16
    assert shown["backend_check"] == {**shown["backend_check"], "resolved": "torch", "within_tolerance": True}
    code, out, _ = run_cli(capsys, "index", "info", "--index-dir", str(index), "--backend", "openvino-int8", "--json")
    assert json.loads(out)["backend_check"]["within_tolerance"] is False
    code, out, _ = run_cli(capsys, "index", "info", "--index-dir", str(index), "--backend", "torch")
    assert f"backend    {BF16} (bfloat16" in out and "--backend torch -> torch: within tolerance" in out


@pytest.mark.timeout(120)
def test_search_backend_encodes_the_queries_and_warns_once_within_tolerance(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path
) -> None:
    index = tmp_path / "idx"
    _build(capsys, tiny_st, _corpus(tmp_path / "c.jsonl"), index, BF16)
    queries = _texts(3, seed=1)
    qfile = tmp_path / "q.txt"
    qfile.write_text("".join(q + "\n" for q in queries))
    code, out, err = run_cli(
        capsys, "search", "--queries", str(qfile), "--index-dir", str(index), "--backend", "torch", "-k", "1", "--json"
    )
    assert code == 0, err
    assert err.count(f"built with backend '{BF16}'; encoding with 'torch'") == 1  # once, not per query
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["backend"] for r in lines] == [{"name": "torch", "precision": "float32"}] * 3
    # the scores are fp32 queries against the stored bf16 documents (bf16 queries would score differently)
    stored = np.load(segment_file(index, "vectors.npy"))
    want = (_encode(tiny_st, "torch", queries) @ stored.T).max(axis=1)
    np.testing.assert_allclose([r["results"][0]["score"] for r in lines], want, atol=1e-5)
    assert np.abs((_encode(tiny_st, BF16, queries) @ stored.T).max(axis=1) - want).max() > 1e-5


@pytest.mark.timeout(120)
def test_a_backend_past_the_index_tolerance_is_refused_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path
) -> None:
    index = tmp_path / "idx"
    _build(capsys, tiny_st, _corpus(tmp_path / "c.jsonl"), index, "torch")
    code, out, err = run_cli(capsys, "search", "a query", "--index-dir", str(index), "--backend", BF16, "--json")
    line = _one_line_error(code, err)
    assert f"--backend {BF16}" in line and "--backend torch" in line and out == ""
    before = committed_state(index)
    more = _corpus(tmp_path / "more.jsonl", n=5, seed=2, prefix="n")
    code, _, err = run_cli(capsys, "index", "add", str(more), "--index-dir", str(index), "--backend", BF16)
    _one_line_error(code, err)
    assert committed_state(index) == before


@pytest.mark.timeout(120)
def test_index_add_encodes_with_its_backend(capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    _build(capsys, tiny_st, _corpus(tmp_path / "c.jsonl"), index, BF16)
    more = _corpus(tmp_path / "more.jsonl", n=5, seed=2, prefix="n")
    code, out, err = run_cli(capsys, "index", "add", str(more), "--index-dir", str(index), "--backend", BF16, "--json")
    assert code == 0, err
    assert json.loads(out)["backend"]["name"] == BF16 and "simtool:" not in err  # the build backend: no warning
    added = np.load(segment_file(index, "vectors.npy", segment=1))
    np.testing.assert_allclose(added, _encode(tiny_st, BF16, _texts(5, seed=2)), atol=1e-6)
    code, out, err = run_cli(capsys, "index", "add", str(more), "--index-dir", str(index), "--backend", "torch")
    assert code == 2 and "already" in err  # torch is within tolerance: it got as far as the duplicate ids


@pytest.mark.timeout(120)
def test_a_manifest_without_backend_loads_as_fp32_torch(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path
) -> None:
    from simtool.index import index_info
    from simtool.retriever import Retriever

    index = tmp_path / "idx"
    _build(capsys, tiny_st, _corpus(tmp_path / "c.jsonl"), index, "torch")
    for path in [index / "manifest.json", *(index / "commits").glob("*.json")]:  # as written before backends
        data = json.loads(path.read_text())
        del data["backend"]
        path.write_text(json.dumps(data))
    info = index_info(index)
    assert info["backend"]["name"] == "torch" and info["backend"]["assumed"] is True
    with Retriever.load(index, device="cpu", gpu=False) as retriever:
        assert encoder_info(retriever.encoder).backend == "torch"
        assert len(retriever.search("a query", 3)) == 3
    code, _, err = run_cli(capsys, "search", "a query", "--index-dir", str(index), "--backend", BF16)
    _one_line_error(code, err)
    code, out, err = run_cli(capsys, "search", "a query", "--index-dir", str(index), "--backend", "torch", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 10 and "simtool:" not in err  # torch built it: no warning


@pytest.mark.timeout(120)
def test_eval_sts_and_retrieval_record_the_backend(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path
) -> None:
    texts = _texts(24, seed=3)
    pairs = [
        {"sentence1": a, "sentence2": b, "score": i % 5}
        for i, (a, b) in enumerate(zip(texts[::2], texts[1::2], strict=True))
    ]
    sts = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    code, out, err = run_cli(
        capsys, "eval", "sts", str(sts), "--format", "pairs", "--model", str(tiny_st), "--backend", BF16, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["encode_backend"]["name"] == BF16

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    _corpus(beir / "corpus.jsonl", n=20)
    write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(_texts(4, seed=4))])
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4))
    )
    code, out, err = run_cli(
        capsys, "eval", "retrieval", str(beir), "--model", str(tiny_st), "--backend", BF16, "--no-gpu", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["encode_backend"]["name"] == BF16


@pytest.mark.timeout(120)
def test_whiten_through_a_model_records_the_backend(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path / "c.jsonl", n=60)
    code, out, err = run_cli(
        capsys,
        *("whiten", "--model", str(tiny_st), "--corpus", str(corpus), "--output", str(tmp_path / "w")),
        *("--dim", "8", "--backend", BF16, "--json"),
    )
    assert code == 0, err
    assert json.loads(out)["backend"]["name"] == BF16


@pytest.mark.timeout(120)
def test_serve_reports_its_backend_and_refuses_one_past_the_index(tiny_st: Path, tmp_path: Path) -> None:
    import httpx

    from simtool.index import build_index
    from simtool.serve.app import load_embedder
    from simtool.serve.config import ServeConfig
    from tests.test_serve import _free_port, _start

    config = ServeConfig(model=str(tiny_st), port=_free_port(), device="cpu", backend=BF16)
    assert ServeConfig.from_json(config.to_json()).backend == BF16  # what --workers processes receive
    server = _start(config)
    url = next(server)
    try:
        assert httpx.get(f"{url}/health").json()["backend"] == BF16
    finally:
        next(server, None)
    index = tmp_path / "idx"
    build_index(_corpus(tmp_path / "c.jsonl"), index, model=str(tiny_st), gpu=False, progress=False)
    with pytest.raises(SimtoolError, match=r"backend='torch'"):
        load_embedder(ServeConfig(index_dir=str(index), device="cpu", backend=BF16))
    assert load_embedder(ServeConfig(index_dir=str(index), device="cpu")).backend == "torch"


@pytest.mark.parametrize(
    "argv",
    [
        ("encode", "c.jsonl", "-o", "x.npy"),
        ("index", "build", "c.jsonl"),
        ("index", "add", "c.jsonl"),
        ("index", "info"),
        ("search", "q"),
        ("eval", "sts", "s.jsonl"),
        ("eval", "retrieval", "beir"),
        ("eval", "suite", "en-sts", "--data-root", "d"),
        ("whiten", "--corpus", "c.jsonl", "--output", "o"),
        ("serve",),
    ],
    ids=lambda a: "-".join(a[:2]),
)
def test_unknown_backend_is_one_line_before_any_work(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    code, out, err = run_cli(capsys, *argv, "--backend", "fp8")
    assert "unknown --backend 'fp8'; choose one of auto" in _one_line_error(code, err) and out == ""


def test_old_search_backend_values_point_to_search_backend(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "search", "q", "--backend", "faiss")
    assert "--search-backend faiss" in _one_line_error(code, err)


def test_the_tolerance_rule() -> None:
    torch, bf16, int8 = ({"name": n} for n in ("torch", BF16, "openvino-int8"))
    assert compat.within_tolerance(torch, "openvino")  # both exact: float rounding only
    assert not compat.within_tolerance(torch, BF16) and not compat.within_tolerance(torch, "openvino-int8")
    assert compat.within_tolerance(bf16, "openvino-bf16") and compat.within_tolerance(bf16, "torch")
    assert not compat.within_tolerance(bf16, "openvino-int8")
    assert all(compat.within_tolerance(int8, n) for n in ("torch", BF16, "openvino", "openvino-int8"))
    assert compat.recorded_backend({})["name"] == "torch"  # manifests older than backends
    with pytest.raises(SimtoolError, match="unknown to this simtool"):
        compat.within_tolerance({"name": "fp4-future"}, "torch")
    assert compat.within_tolerance({"name": "fp4-future", "tolerance": 0.1}, BF16)  # its recorded tolerance


def test_auto_on_an_index_with_faked_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(flags: set[str], openvino: bool = True) -> None:
        caps = Capabilities(cuda=False, cpu_flags=frozenset(flags), openvino=openvino)
        monkeypatch.setattr(compat, "detect_capabilities", lambda device, model_dir: caps)

    fp32_index, bf16_index = {"name": "torch"}, {"name": "openvino-bf16"}
    fake({"avx2"})
    assert compat.check(fp32_index, "auto")["resolved"] == "openvino"  # exact: the machine's choice
    fake({"avx2", "avx512_bf16"})
    assert compat.check(fp32_index, "auto")["resolved"] == "torch"  # openvino-bf16 is past fp32: the build backend
    assert compat.check(bf16_index, "auto")["resolved"] == "openvino-bf16"
    fake({"avx2", "amx_bf16"}, openvino=False)
    assert compat.check(fp32_index, "auto")["resolved"] == "torch"
    assert compat.check(bf16_index, "auto")["resolved"] == BF16  # within bf16's tolerance


@pytest.mark.timeout(120)
def test_simtool_backend_sets_the_default(
    capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMTOOL_BACKEND", BF16)
    code, out, err = run_cli(
        capsys, "index", "build", str(_corpus(tmp_path / "c.jsonl", n=10)), "--index-dir", str(tmp_path / "i"),
        "--model", str(tiny_st), "--no-gpu", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["backend"]["name"] == BF16


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_serve_cli_backend_reaches_the_served_encoder(tiny_st: Path) -> None:
    import httpx

    from tests.test_serve import _spawn_server

    proc, url = _spawn_server("--model", str(tiny_st), "--backend", BF16)
    try:
        assert httpx.get(f"{url}/health").json()["backend"] == BF16
    finally:
        proc.terminate()
        proc.wait(30)
