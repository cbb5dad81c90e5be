"""Index directories: build, manifest, search, add, and the consistency checks on load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from simtool.corpus import read_documents
from simtool.encoder import encode_texts, load_encoder
from simtool.errors import CorpusError, IndexDirError, SimtoolError
from simtool.index import DOCS_FILE, INDEX_FILE, VECTORS_FILE, add_to_index, build_index, index_info, verify_index
from simtool.manifest import MANIFEST_NAME, Manifest
from simtool.retriever import Retriever
from tests.conftest import committed_state, search_rows, segment_file, write_jsonl


@pytest.fixture
def built(tmp_path: Path, small_corpus: Path, tiny_st: Path) -> Path:
    out = tmp_path / "idx"
    build_index(small_corpus, out, model=str(tiny_st), progress=False)
    return out


def test_build_writes_a_self_describing_directory(built: Path, small_corpus: Path, tiny_st: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == sorted(["commits", "segments", MANIFEST_NAME])
    m = Manifest.load(built)
    assert (m.count, m.dim, m.metric, m.factory, m.generation) == (40, 32, "ip", "Flat", 1)
    assert m.model.name_or_path == str(tiny_st.resolve()) and m.model.pooling == "mean"
    (seg,) = m.segments
    assert (seg.count, seg.deleted, seg.factory) == (40, 0, "Flat")
    assert sorted(m.files) == sorted(f"segments/{seg.name}/{n}" for n in (INDEX_FILE, DOCS_FILE, VECTORS_FILE))
    for name in m.files:
        m.verify_file(built, name)
    # vectors.npy holds exactly the encoder's output for title + " " + text
    docs = list(read_documents(small_corpus))
    expected = encode_texts(load_encoder(tiny_st, device="cpu"), [d.encoded_text for d in docs])
    np.testing.assert_allclose(np.load(segment_file(built, VECTORS_FILE)), expected, atol=1e-6)
    assert not list(built.parent.glob(".idx.staging-*"))  # nothing left beside it


def test_manifest_round_trips(built: Path) -> None:
    m = Manifest.load(built)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    m.save(built / "..")
    assert Manifest.load(built / "..") == m


def test_search_finds_each_document_by_its_own_text(built: Path, small_corpus: Path) -> None:
    docs = list(read_documents(small_corpus))
    with Retriever.load(built) as r:
        results = r.search([d.encoded_text for d in docs], k=3)
        single = r.search(docs[5].encoded_text, k=3)
    assert [hits[0].id for hits in results] == [d.id for d in docs]
    assert all(abs(hits[0].score - 1.0) < 1e-4 for hits in results)  # normalised: self-similarity 1
    assert single == results[5]
    top = results[0][0]
    assert (top.rank, top.title, top.text) == (1, docs[0].title, docs[0].text)
    assert [h.rank for h in results[0]] == [1, 2, 3]


def test_retriever_agrees_with_numpy_brute_force(built: Path) -> None:
    vectors = np.load(segment_file(built, VECTORS_FILE)).astype(np.float64)
    with Retriever.load(built) as r:
        q = r.encode(["the red cat", "python exception"])
        scores, rows = search_rows(r.search_vectors(q, 5))
        _, t_rows = search_rows(Retriever.load(built, backend="torch", device="cpu").search_vectors(q, 5))
    ref = q.astype(np.float64) @ vectors.T
    np.testing.assert_array_equal(rows, np.argsort(-ref, axis=1)[:, :5])
    np.testing.assert_allclose(scores, np.sort(ref, axis=1)[:, ::-1][:, :5], atol=1e-5)
    np.testing.assert_array_equal(t_rows, rows)


def test_k_larger_than_corpus_returns_every_document_once(built: Path) -> None:
    with Retriever.load(built) as r:
        hits = r.search("cat", k=100)
        with pytest.raises(SimtoolError, match="k must be positive"):
            r.search("cat", k=0)
        with pytest.raises(SimtoolError, match="query 1 is empty"):
            r.search(["  "], k=1)
    assert len(hits) == 40 and len({h.id for h in hits}) == 40


def test_l2_metric_and_explicit_factory(tmp_path: Path, small_corpus: Path, tiny_st: Path) -> None:
    out = tmp_path / "l2"
    build_index(small_corpus, out, model=str(tiny_st), metric="l2", factory="HNSW8,Flat", progress=False)
    m = Manifest.load(out)
    assert (m.metric, m.factory, m.search_params) == ("l2", "HNSW8,Flat", {"efSearch": 64})
    with Retriever.load(out) as r:
        hits = r.search("the big red bus", k=40)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)  # squared distances ascend
    assert all(h.score == -h.distance for h in hits)  # and the score is higher-is-better


def test_add_appends_and_rejects_or_skips_duplicates(built: Path, tmp_path: Path) -> None:
    before = committed_state(built)
    more = write_jsonl(
        tmp_path / "more.jsonl",
        [{"_id": "new1", "text": "a fish swims at night"}, {"_id": "d3", "text": "duplicate of an indexed id"}],
    )
    with pytest.raises(SimtoolError, match=r"1 id\(s\) already in the index \(first: 'd3'\).*on_duplicate='skip'"):
        add_to_index(more, built, progress=False)
    assert committed_state(built) == before  # nothing written
    manifest, added, skipped = add_to_index(more, built, on_duplicate="skip", progress=False)
    assert (manifest.count, added, skipped) == (41, 1, 1)
    with Retriever.load(built) as r:
        (hit,) = r.search("a fish swims at night", k=1)
        old = r.search("duplicate of an indexed id", k=41)
    assert hit.id == "new1" and hit.score == pytest.approx(1.0, abs=1e-4)
    assert next(h for h in old if h.id == "d3").text != "duplicate of an indexed id"  # the original kept
    assert index_info(built)["count"] == 41
    assert add_to_index(more, built, on_duplicate="skip", progress=False)[1:] == (0, 2)


def test_add_to_trained_ivf_index(tmp_path: Path, tiny_st: Path) -> None:
    rows = [
        {"_id": str(i), "text": f"doc {i} " + " ".join(["cat", "dog", "bus"][j % 3] for j in range(i % 7))}
        for i in range(600)
    ]
    out = tmp_path / "ivf"
    build_index(
        write_jsonl(tmp_path / "c.jsonl", rows[:500]), out, model=str(tiny_st), factory="IVF4,Flat", progress=False
    )
    add_to_index(write_jsonl(tmp_path / "d.jsonl", rows[500:]), out, progress=False)
    with Retriever.load(out, search_params={"nprobe": 4}) as r:
        hits = r.search([rows[555]["text"], rows[5]["text"]], k=1)
    assert [h[0].id for h in hits] == ["555", "5"]
    assert Manifest.load(out).count == 600


def test_corrupted_file_is_caught_by_checksum(built: Path) -> None:
    for name in (INDEX_FILE, DOCS_FILE, VECTORS_FILE):
        broken = built.parent / f"broken-{name}"
        shutil.copytree(built, broken)
        path = segment_file(broken, name)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(IndexDirError, match=rf"{name}: checksum mismatch"):
            verify_index(broken)
        with pytest.raises(IndexDirError, match=rf"{name}: checksum mismatch"):
            index_info(broken, verify=True)
    Retriever.load(built).close()  # the original is untouched


def test_index_built_by_another_model_is_refused(built: Path, tmp_path: Path, tiny_st: Path) -> None:
    other = load_encoder(tiny_st, device="cpu")
    with torch.no_grad():
        next(other.parameters()).mul_(1.5)
    other.save(str(tmp_path / "other"))
    extra = write_jsonl(tmp_path / "x.jsonl", [{"_id": "z", "text": "zebra"}])
    with pytest.raises(IndexDirError, match=r"built by model .* fingerprint"):
        add_to_index(extra, built, model=str(tmp_path / "other"), progress=False)
    # the model directory the index points to was replaced by a different one
    m = Manifest.load(built)
    m.model.name_or_path = str(tmp_path / "other")
    m.save(built)
    with pytest.raises(IndexDirError, match="built by model"):
        Retriever.load(built)


def test_dimension_mismatch_is_refused(built: Path, tmp_path: Path) -> None:
    from tests.conftest import make_tiny_bert

    wide = make_tiny_bert(tmp_path / "wide", hidden=48)
    m = Manifest.load(built)
    m.model.name_or_path, m.model.pooling = str(wide), "mean"
    m.save(built)
    with pytest.raises(IndexDirError, match="built from 32-dim vectors but the model gives 48"):
        Retriever.load(built)


def test_missing_index_and_bad_build_inputs(tmp_path: Path, small_corpus: Path, tiny_st: Path) -> None:
    with pytest.raises(IndexDirError, match="no index here"):
        Retriever.load(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexDirError, match="not a simtool index"):
        index_info(tmp_path / "plain")
    target = tmp_path / "never"
    with pytest.raises(SimtoolError, match=r"factory=.* is unknown or invalid"):
        build_index(small_corpus, target, model=str(tiny_st), factory="Nope", progress=False)
    with pytest.raises(CorpusError, match="duplicate id"):
        build_index(
            write_jsonl(tmp_path / "dup.jsonl", [{"_id": "a", "text": "x"}] * 2),
            target,
            model=str(tiny_st),
            progress=False,
        )
    assert not target.exists() and not list(tmp_path.glob(".never.staging-*"))


def test_rebuild_replaces_the_previous_index(built: Path, tmp_path: Path, tiny_st: Path) -> None:
    build_index(
        write_jsonl(tmp_path / "one.jsonl", [{"_id": "only", "text": "just one"}]),
        built,
        model=str(tiny_st),
        progress=False,
    )
    with Retriever.load(built) as r:
        assert [h.id for h in r.search("anything", k=5)] == ["only"]
    assert not list(built.parent.glob(".idx.staging-*"))
