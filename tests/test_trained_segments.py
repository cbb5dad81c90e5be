"""One trained quantizer per index: segments filled from it, and compaction that merges IVF lists on disk."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simtool.index import EncodedPart, Index, build_index, live_vectors, verify_index
from simtool.manifest import Manifest
from simtool.retriever import Retriever
from simtool.segments import IVFDATA_FILE, SEGMENTS_DIR
from tests.test_live_index import QUERIES, assert_same_results, make_docs

NLIST = 8


@pytest.fixture(scope="module")
def parts(encoder: Any) -> list[EncodedPart]:
    """1,200 documents and their vectors, encoded once, as 12 parts of 100."""
    docs = make_docs(list(range(1200)))
    vectors = encoder.encode([d.text for d in docs], convert_to_numpy=True).astype(np.float32)
    return [EncodedPart(docs[i : i + 100], vectors[i : i + 100]) for i in range(0, 1200, 100)]


def _search(path: Path, encoder: Any, k: int = 20) -> list[list[Any]]:
    with Retriever.load(path, encoder=encoder, search_params={"nprobe": NLIST}) as r:
        return r.search(QUERIES, k=k)


def _exact(path: Path, encoder: Any, k: int = 20) -> list[list[str]]:
    """Top-k ids by float64 brute force over the index's live raw vectors."""
    x = np.asarray(live_vectors(path), dtype=np.float64)
    ids = [d.id for seg_docs in _live_docs(path) for d in seg_docs]
    q = encoder.encode(QUERIES, convert_to_numpy=True).astype(np.float64)
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in q @ x.T]


def _live_docs(path: Path) -> list[list[Any]]:
    from simtool.index import _live_rows

    return [part.docs for seg in Manifest.load(path).segments for part in _live_rows(path, seg)]


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,SQ8"])
def test_segments_filled_from_one_training_search_like_one_segment(
    tmp_path: Path, encoder: Any, parts: list[EncodedPart], factory: str
) -> None:
    build_index(parts, tmp_path / "one", model=encoder, factory=factory, progress=False)
    build_index(iter(parts), tmp_path / "four", model=encoder, factory=factory, progress=False, segment_rows=300)
    one, four = Manifest.load(tmp_path / "one"), Manifest.load(tmp_path / "four")
    assert len(one.segments) == 1 and [s.count for s in four.segments] == [300] * 4
    # one training on the same seeded sample of all rows, and every segment filled from it
    assert {s.trained for s in four.segments} == {four.trained["file"]}
    a = (tmp_path / "one" / one.trained["file"]).read_bytes()
    assert a == (tmp_path / "four" / four.trained["file"]).read_bytes()
    assert_same_results(_search(tmp_path / "four", encoder), _search(tmp_path / "one", encoder))


def test_compact_merges_ivf_lists_on_disk_and_a_moved_index_still_opens(
    tmp_path: Path, encoder: Any, parts: list[EncodedPart], capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "idx"
    build_index(iter(parts), path, model=encoder, factory="IVF8,SQ8", progress=False, segment_rows=400)
    before = _search(path, encoder)
    index = Index(path, encoder=encoder, auto_merge=False)
    capfd.readouterr()
    index.compact()
    assert capfd.readouterr().out == ""  # faiss's own resize messages must not reach stdout (--json)
    m = Manifest.load(path)
    (seg,) = m.segments
    assert seg.ondisk and seg.count == 1200 and seg.trained == m.trained["file"]
    assert f"{SEGMENTS_DIR}/{seg.name}/{IVFDATA_FILE}" in m.files
    # the same codes in the same lists: the same hits and scores as the three segments gave
    assert_same_results(_search(path, encoder), before)
    assert verify_index(path)["ok"]
    shutil.move(str(path), str(tmp_path / "moved"))  # faiss recorded the old path of the lists
    assert_same_results(_search(tmp_path / "moved", encoder), before)


def test_compact_recodes_deleted_and_flat_segments_into_the_trained_lists(
    tmp_path: Path, encoder: Any, parts: list[EncodedPart]
) -> None:
    path = tmp_path / "idx"
    build_index(iter(parts[:10]), path, model=encoder, factory="IVF8,Flat", progress=False, segment_rows=500)
    index = Index(path, encoder=encoder, auto_merge=False)
    index.delete([f"d{i}" for i in range(0, 1000, 7)])
    index.append(parts[10:])  # 200 rows: too few to train, so an exact Flat segment
    m = Manifest.load(path)
    assert [s.factory for s in m.segments] == ["IVF8,Flat", "IVF8,Flat", "Flat"] and m.segments[0].deleted
    index.compact()
    (seg,) = Manifest.load(path).segments
    assert seg.ondisk and seg.count == 1200 - len(range(0, 1000, 7))
    # IVF-Flat probing every list is exact: the hits are the float64 brute force's over the live rows
    got = _search(path, encoder)
    assert [[h.id for h in hits] for hits in got] == _exact(path, encoder)
    assert not {h.id for hits in got for h in hits} & {f"d{i}" for i in range(0, 1000, 7)}


def test_retrain_and_new_reducers_index_afresh(tmp_path: Path, encoder: Any, parts: list[EncodedPart]) -> None:
    path = tmp_path / "idx"
    build_index(iter(parts), path, model=encoder, factory="IVF8,Flat", progress=False, segment_rows=600)
    old = Manifest.load(path).trained["file"]
    Index(path, encoder=encoder).compact(retrain=True)
    m = Manifest.load(path)
    (seg,) = m.segments
    assert not seg.ondisk and m.trained["file"] != old and seg.trained == m.trained["file"]
    assert not (path / old).exists()  # collected with the generation that last used it
    assert [[h.id for h in hits] for hits in _search(path, encoder)] == _exact(path, encoder)


def test_a_failed_streamed_build_leaves_nothing(tmp_path: Path, encoder: Any, parts: list[EncodedPart]) -> None:
    from simtool.errors import SimtoolError

    clash = EncodedPart(parts[0].docs[:1], parts[0].vectors[:1])
    with pytest.raises(SimtoolError, match="duplicate id 'd0' in parts"):
        build_index(iter([*parts[:5], clash]), tmp_path / "idx", model=encoder, factory="IVF8,Flat", progress=False)
    assert not (tmp_path / "idx").exists() and not list(tmp_path.iterdir())


def test_cli_build_in_segments_then_compact_merges_lists(
    tmp_path: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.conftest import run_cli, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": d.id, "text": d.text} for d in make_docs(list(range(600)))])
    idx = str(tmp_path / "idx")
    common = ("--index-dir", idx, "--json")
    code, out, err = run_cli(
        capsys, "index", "build", str(corpus), "--model", str(tiny_st), "--factory", "IVF4,Flat",
        "--segment-rows", "200", *common,
    )  # fmt: skip
    assert code == 0, err
    assert [s["count"] for s in json.loads(out)["segments"]] == [200, 200, 200]
    code, out, err = run_cli(capsys, "index", "compact", *common)
    report = json.loads(out)
    assert code == 0 and (report["segments_before"], report["segments"]) == (3, 1)
    assert report["method"] == "merged inverted lists" and report["count"] == 600
    code, out, err = run_cli(capsys, "index", "compact", "--retrain", *common)
    assert code == 0 and json.loads(out)["method"] == "re-indexed"
    code, _, err = run_cli(capsys, "index", "build", str(corpus), "--segment-rows", "0", *common)
    assert code != 0 and "--segment-rows" in err and len(err.strip().splitlines()) == 1
