"""`simtool encode --long-text`: the file written matches the library's chunked encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WORDS, run_cli, write_jsonl


def _corpus(tmp_path: Path) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(5)
    rows = [
        {"_id": f"d{i}", "text": " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), n))}
        for i, n in enumerate([120, 8, 60])
    ]
    return write_jsonl(tmp_path / "corpus.jsonl", rows), rows


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["chunk-max", "chunk-mean"])
def test_encode_long_text_matches_encode_chunked(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    from simtool.chunking import encode_chunked
    from simtool.encoder import load_encoder

    corpus, rows = _corpus(tmp_path)
    out = tmp_path / "v.npy"
    code, stdout, err = run_cli(
        capsys, "encode", str(corpus), "-o", str(out), "--model", str(tiny_st), "--long-text", mode,
        "--chunk-tokens", "20", "--chunk-overlap", "4", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    vectors = np.load(out, allow_pickle=False)
    ids = json.loads(out.with_suffix(".ids.json").read_text())
    ref = encode_chunked(
        load_encoder(tiny_st, device="cpu"), [r["text"] for r in rows], mode=mode, chunk_tokens=20, chunk_overlap=4
    )
    assert report["rows"] == len(vectors) == len(ids) and report["n"] == 3 and report["long_text"] == mode
    np.testing.assert_allclose(vectors, ref.vectors, atol=1e-5)
    assert ids == [rows[o]["_id"] for o in ref.owners]
    if mode == "chunk-max":
        assert len(vectors) > 3 and ids.count("d0") > ids.count("d2") > 1 and ids.count("d1") == 1
    else:
        assert ids == ["d0", "d1", "d2"]


def test_encode_bad_long_text_is_one_line_and_writes_nothing(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, _ = _corpus(tmp_path)
    out = tmp_path / "v.npy"
    for flags in (["--long-text", "chunk-median"], ["--long-text", "chunk-max", "--chunk-overlap", "400"]):
        code, _, err = run_cli(capsys, "encode", str(corpus), "-o", str(out), "--model", str(tiny_st), *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("simtool: error:")
        assert not out.exists() and not out.with_suffix(".ids.json").exists()


def test_cli_default_overlap_is_the_library_default() -> None:
    from simtool.chunking import DEFAULT_CHUNK_OVERLAP, LONG_TEXT_MODES
    from simtool.cli import long_cmd

    assert long_cmd.DEFAULT_CHUNK_OVERLAP == DEFAULT_CHUNK_OVERLAP
    assert all(m in long_cmd.LongText.__metadata__[0].help for m in LONG_TEXT_MODES)


@pytest.mark.timeout(120)
def test_index_build_chunk_mean_is_recorded_and_reused_by_add(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simtool.chunking import encode_long
    from simtool.encoder import encode_texts, load_encoder
    from simtool.index import index_info, live_vectors

    corpus, rows = _corpus(tmp_path)
    index_dir = tmp_path / "idx"
    window = ["--chunk-tokens", "20", "--chunk-overlap", "4"]
    code, stdout, err = run_cli(
        capsys, "index", "build", str(corpus), "--index-dir", str(index_dir), "--model", str(tiny_st),
        "--long-text", "chunk-mean", *window, "--json",
    )  # fmt: skip
    assert code == 0, err
    spec = {"mode": "chunk-mean", "chunk_tokens": 20, "chunk_overlap": 4}
    assert json.loads(stdout)["long_text"] == spec
    extra = {"_id": "d9", "text": " ".join(WORDS[i % len(WORDS)] for i in range(150))}
    code, _, err = run_cli(
        capsys, "index", "add", str(write_jsonl(tmp_path / "more.jsonl", [extra])), "--index-dir", str(index_dir)
    )
    assert code == 0, err
    model = load_encoder(tiny_st, device="cpu")
    texts = [r["text"] for r in rows] + [extra["text"]]
    ref = encode_long(model, texts, mode="chunk-mean", chunk_tokens=20, chunk_overlap=4)
    got = np.asarray(live_vectors(index_dir))
    np.testing.assert_allclose(got, ref, atol=1e-5)  # the added document is chunk-mean too, not truncated
    assert not np.allclose(got[3], encode_texts(model, [extra["text"]])[0], atol=1e-3)
    assert index_info(index_dir)["long_text"] == spec


def test_chunk_max_index_on_ray_is_one_line_before_any_cluster(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, _ = _corpus(tmp_path)
    index_dir = tmp_path / "idx"
    base = ["--index-dir", str(index_dir)]
    code, _, err = run_cli(
        capsys, "index", "build", str(corpus), *base, "--model", str(tiny_st), "--long-text", "chunk-max",
        "--ray", "local",
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "on Ray yet" in err and not index_dir.exists()
    code, _, err = run_cli(
        capsys, "index", "build", str(corpus), *base, "--model", str(tiny_st), "--long-text", "chunk-max",
    )  # fmt: skip
    assert code == 0, err
    generation = json.loads((index_dir / "manifest.json").read_text())["generation"]
    more = write_jsonl(tmp_path / "more.jsonl", [{"_id": "d9", "text": "one more"}])
    code, _, err = run_cli(capsys, "index", "add", str(more), *base, "--ray", "local")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "chunk-max" in err
    assert json.loads((index_dir / "manifest.json").read_text())["generation"] == generation
