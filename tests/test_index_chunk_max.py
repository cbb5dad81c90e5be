"""A chunk-max index (one vector per token window, MaxP): search returns documents, each once, scored
by its best chunk, checked against a float64 brute force over every chunk, through deletes, upserts,
added segments, compaction and filters."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simtool.chunking import token_windows
from simtool.corpus import Document
from simtool.encoder import embedding_dim, encode_texts
from simtool.errors import SimtoolError
from simtool.index import EncodedPart, Index, add_to_index, build_index, encode_parts, index_info, verify_index
from simtool.manifest import Manifest
from simtool.retriever import Hit, Retriever
from tests.conftest import WORDS, run_cli, write_jsonl

QUERIES = ["the red cat sat", "python code runs", "a big bus at night", "rain in the city", "an old tree"]
CHUNK_TOKENS, CHUNK_OVERLAP = 8, 2
LONG_TEXT = {"long_text": "chunk-max", "chunk_tokens": CHUNK_TOKENS, "chunk_overlap": CHUNK_OVERLAP}


def make_docs(ids: list[int], version: int = 0) -> list[Document]:
    """Documents of 3 to 40 words (1 to 6 windows of 8 tokens); ``version`` changes an id's text."""
    out = []
    for i in ids:
        rng = random.Random(i * 1000 + version)
        words = rng.choices(WORDS, k=rng.randint(3, 40))
        out.append(
            Document(
                id=f"d{i}",
                text=" ".join(words) + f" {i} v{version}",
                metadata={"source": rng.choice(["docs", "web"]), "year": rng.randint(2018, 2023)},
            )
        )
    return out


def reference(
    encoder: Any, docs: list[Document], queries: list[str], k: int, keep: Callable[[Document], bool] | None = None
) -> list[list[tuple[str, float]]]:
    """MaxP by brute force: every chunk encoded, each document's best cosine in float64, ranked."""
    docs = [d for d in docs if keep is None or keep(d)]
    windows, owners = token_windows(encoder.tokenizer, [d.encoded_text for d in docs], CHUNK_TOKENS, CHUNK_OVERLAP)
    chunks = encode_texts(encoder, windows).astype(np.float64)
    q = encode_texts(encoder, queries).astype(np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (chunks / np.linalg.norm(chunks, axis=1, keepdims=True)).T
    out = []
    for row in sims:
        best = {d.id: max(row[c] for c in np.flatnonzero(owners == j)) for j, d in enumerate(docs)}
        ranked = sorted(best.items(), key=lambda item: -item[1])
        out.append(ranked[:k])
    return out


def assert_matches(got: list[list[Hit]], want: list[list[tuple[str, float]]], live: dict[str, Document]) -> None:
    """Same documents in the same order (ties of equal score in any order), scores within 1e-5, each once."""
    for hits, ref in zip(got, want, strict=True):
        ids = [h.id for h in hits]
        assert len(ids) == len(set(ids)) == len(ref)
        np.testing.assert_allclose([h.score for h in hits], [s for _, s in ref], atol=1e-5)
        # Only a tie may reorder: every hit scores what the reference gives its own id (bucketing scores by
        # rounding split a tie that straddled a rounding boundary).
        ref_score = dict(ref)
        assert set(ids) == set(ref_score)
        np.testing.assert_allclose([h.score for h in hits], [ref_score[h.id] for h in hits], atol=1e-5)
        for h in hits:  # a hit names the document: its text, title and metadata, not a chunk's
            assert h.text == live[h.id].text and h.metadata == live[h.id].metadata


def check(index_dir: Path, encoder: Any, live: dict[str, Document], **search: Any) -> None:
    docs = list(live.values())
    keep = search.pop("keep", None)
    with Retriever.load(index_dir, encoder=encoder, **search.pop("load", {})) as r:
        for k in (1, 4, len(docs) + 3):
            assert_matches(r.search(QUERIES, k=k, **search), reference(encoder, docs, QUERIES, k, keep), live)


def test_build_searches_documents_by_their_best_chunk(tmp_path: Path, encoder: Any) -> None:
    docs = make_docs(list(range(30)))
    manifest = build_index(docs, tmp_path / "idx", model=encoder, factory="Flat", progress=False, **LONG_TEXT)
    assert manifest.long_text == {"mode": "chunk-max", "chunk_tokens": CHUNK_TOKENS, "chunk_overlap": CHUNK_OVERLAP}
    seg = manifest.segments[0]
    assert manifest.count == seg.count == 30 and seg.chunks is not None and seg.chunks > 2 * seg.count
    assert f"segments/{seg.name}/chunks.npy" in manifest.files
    verify_index(tmp_path / "idx")
    check(tmp_path / "idx", encoder, {d.id: d for d in docs})


def test_deletes_upserts_added_segments_and_compaction_keep_maxp_exact(tmp_path: Path, encoder: Any) -> None:
    index_dir = tmp_path / "idx"
    live = {d.id: d for d in make_docs(list(range(24)))}
    # three segments from the start: parts split across segments keep their chunks together
    build_index(
        list(live.values()), index_dir, model=encoder, factory="Flat", progress=False, segment_rows=10, **LONG_TEXT
    )
    assert len(Manifest.load(index_dir).segments) == 3
    check(index_dir, encoder, live)
    index = Index(index_dir, encoder=encoder, auto_merge=False)

    index.delete(["d3", "d11", "d20", "nope"])
    for i in ("d3", "d11", "d20"):
        live.pop(i)
    check(index_dir, encoder, live)

    upserted = make_docs([5, 12, 40], version=1)  # two replace documents of other segments, one is new
    index.upsert(upserted)
    live.update((d.id, d) for d in upserted)
    check(index_dir, encoder, live)
    old = make_docs([5, 12])  # the replaced texts' chunks are gone with them
    with Retriever.load(index_dir, encoder=encoder) as r:
        queries = [d.text for d in old]
        assert_matches(r.search(queries, k=5), reference(encoder, list(live.values()), queries, 5), live)

    more = make_docs(list(range(50, 58)))
    index.add(more)
    live.update((d.id, d) for d in more)
    assert len(index.manifest.segments) == 5
    check(index_dir, encoder, live)
    check(index_dir, encoder, live, filter={"source": "docs"}, keep=lambda d: d.metadata["source"] == "docs")
    check(
        index_dir,
        encoder,
        live,
        filter={"year": {"$gte": 2021}},
        keep=lambda d: d.metadata["year"] >= 2021,
    )

    index.compact()
    manifest = index.manifest
    assert len(manifest.segments) == 1 and manifest.segments[0].deleted == 0 and manifest.count == len(live)
    check(index_dir, encoder, live)
    check(index_dir, encoder, live, filter={"source": "web"}, keep=lambda d: d.metadata["source"] == "web")
    verify_index(index_dir)


def test_ivf_segments_merge_their_lists_with_the_chunk_map(tmp_path: Path, encoder: Any) -> None:
    index_dir = tmp_path / "idx"
    live = {d.id: d for d in make_docs(list(range(60)))}
    build_index(
        list(live.values()), index_dir, model=encoder, factory="IVF2,Flat", progress=False, segment_rows=25, **LONG_TEXT
    )
    exact = {"load": {"search_params": {"nprobe": 2}}}  # every list: IVF2 searches exactly
    assert [s.trained for s in Manifest.load(index_dir).segments].count(None) == 0
    index = Index(index_dir, encoder=encoder, auto_merge=False)
    index.delete(["d1", "d30"])
    for i in ("d1", "d30"):
        live.pop(i)
    index.compact()
    assert len(index.manifest.segments) == 1 and index.manifest.segments[0].ondisk  # lists merged, not re-indexed
    check(index_dir, encoder, live, **exact)


def test_cli_build_and_search_json_end_to_end(
    tmp_path: Path, encoder: Any, tiny_st: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = make_docs(list(range(12)))
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"_id": d.id, "text": d.text, **d.metadata} for d in docs])
    index_dir = tmp_path / "idx"
    window = ["--chunk-tokens", str(CHUNK_TOKENS), "--chunk-overlap", str(CHUNK_OVERLAP)]
    code, out, err = run_cli(
        capsys, "index", "build", str(corpus), "--index-dir", str(index_dir), "--model", str(tiny_st),
        "--factory", "Flat", "--long-text", "chunk-max", *window, "--json",
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(out)
    assert info["long_text"]["mode"] == "chunk-max" and info["count"] == 12
    code, out, err = run_cli(capsys, "search", QUERIES[0], "--index-dir", str(index_dir), "-k", "5", "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    ref = reference(encoder, docs, QUERIES[:1], 5)[0]
    assert [r["id"] for r in results] == [i for i, _ in ref]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in ref], atol=1e-5)
    by_id = {d.id: d for d in docs}
    assert all(r["text"] == by_id[r["id"]].text for r in results)

    code, out, err = run_cli(capsys, "index", "info", "--index-dir", str(index_dir))
    assert code == 0 and f"chunk-max ({CHUNK_TOKENS}-token windows, overlap {CHUNK_OVERLAP})" in out

    # `index add` encodes as the index does; a different method or window is one line and writes nothing
    more = write_jsonl(tmp_path / "more.jsonl", [{"_id": d.id, "text": d.text} for d in make_docs([20, 21])])
    generation = Manifest.load(index_dir).generation
    for flags, named in (
        (["--long-text", "chunk-mean"], "--long-text"),
        (["--long-text", "truncate"], "--long-text"),
        (["--chunk-tokens", "9"], "--chunk-tokens"),
        (["--chunk-overlap", "0"], "--chunk-overlap"),
    ):
        code, _, err = run_cli(capsys, "index", "add", str(more), "--index-dir", str(index_dir), *flags)
        assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
        assert Manifest.load(index_dir).generation == generation
    code, out, err = run_cli(
        capsys, "index", "add", str(more), "--index-dir", str(index_dir), "--long-text", "chunk-max", *window, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["added"] == 2 and Manifest.load(index_dir).count == 14


def test_writes_that_cannot_be_chunk_max_are_refused(tmp_path: Path, encoder: Any) -> None:
    index_dir = tmp_path / "idx"
    docs = make_docs(list(range(6)))
    build_index(docs, index_dir, model=encoder, factory="Flat", progress=False, **LONG_TEXT)
    index = Index(index_dir, encoder=encoder)
    new = make_docs([9])
    with pytest.raises(SimtoolError, match="vectors: a chunk-max index"):
        index.write(new, vectors=np.zeros((1, embedding_dim(encoder)), np.float32))
    with pytest.raises(SimtoolError, match="parts: a chunk-max index"):
        index.append([EncodedPart(new, np.zeros((1, embedding_dim(encoder)), np.float32))])
    with pytest.raises(SimtoolError, match="long_text='chunk-mean' does not match the index's 'chunk-max'"):
        add_to_index(write_jsonl(tmp_path / "m.jsonl", [{"_id": "x", "text": "a"}]), index_dir, long_text="chunk-mean")
    with pytest.raises(SimtoolError, match="backend='torch'"):
        Retriever.load(index_dir, encoder=encoder, backend="torch")
    assert Manifest.load(index_dir).count == 6
    # parts encoded elsewhere with encode_parts carry their owners and are accepted
    spec = index.manifest.long_text
    index.append(encode_parts(encoder, new, long_text=spec))
    check(index_dir, encoder, {d.id: d for d in [*docs, *new]})
    # and chunk owners are refused by an index of one vector per document
    plain = tmp_path / "plain"
    build_index(docs, plain, model=encoder, factory="Flat", progress=False)
    with pytest.raises(SimtoolError, match="owners are for a chunk-max index"):
        Index(plain, encoder=encoder).append(encode_parts(encoder, new, long_text=spec))
    assert index_info(plain)["count"] == 6


def test_hits_carry_their_best_chunk_vector(tmp_path: Path, encoder: Any) -> None:
    docs = make_docs(list(range(10)))
    build_index(docs, tmp_path / "idx", model=encoder, factory="Flat", progress=False, **LONG_TEXT)
    with Retriever.load(tmp_path / "idx", encoder=encoder) as r:
        q = r.encode(QUERIES[:2])
        hits, stored = r.search_vectors_with_hits(q, k=3)
        for qi in range(2):
            np.testing.assert_allclose(stored[qi] @ q[qi], [h.score for h in hits[qi]], atol=1e-5)
        vectors, ids = r.live_vectors()
        assert len(vectors) == r.manifest.segments[0].chunks and sorted(set(ids)) == sorted(d.id for d in docs)


def test_eval_flat_ideal_of_a_chunk_max_index_is_maxp(tmp_path: Path, encoder: Any) -> None:
    from simtool.evals.retrieval import _flat_run

    docs = make_docs(list(range(15)))
    build_index(docs, tmp_path / "idx", model=encoder, factory="Flat", progress=False, **LONG_TEXT)
    with Retriever.load(tmp_path / "idx", encoder=encoder) as r:
        for k in (3, 20):
            flat = _flat_run(r, [f"q{i}" for i in range(len(QUERIES))], QUERIES, k, 16)
            for hits, ref in zip(flat, reference(encoder, docs, QUERIES, k), strict=True):
                assert [h.id for h in hits] == [i for i, _ in ref]
                np.testing.assert_allclose([h.score for h in hits], [s for _, s in ref], atol=1e-5)


def test_a_document_of_many_matching_chunks_makes_the_search_widen(
    tmp_path: Path, encoder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simtool.segments import SegmentReader

    # d0's 20 near-identical windows outscore every other document's one window for this query, so the
    # first fetch (2 * k * mean windows per document) holds d0 alone and must be doubled
    long = Document(id="d0", text=" ".join(["cat"] * 160))
    docs = [long, *make_docs(list(range(1, 10)))]
    docs = [d if d.id == "d0" else Document(id=d.id, text=" ".join(d.text.split()[:5])) for d in docs]
    build_index(docs, tmp_path / "idx", model=encoder, factory="Flat", progress=False, **LONG_TEXT)
    fetches: list[int] = []
    original = SegmentReader._search_rows

    def counted(self: SegmentReader, queries: np.ndarray, k: int, *args: Any) -> Any:
        fetches.append(k)
        return original(self, queries, k, *args)

    monkeypatch.setattr(SegmentReader, "_search_rows", counted)
    live = {d.id: d for d in docs}
    with Retriever.load(tmp_path / "idx", encoder=encoder) as r:
        chunks = r.manifest.segments[0].chunks
        assert chunks is not None and chunks >= 25
        queries = ["cat cat cat cat"]
        assert_matches(r.search(queries, k=3), reference(encoder, docs, queries, 3), live)
    assert len(fetches) >= 2 and fetches[1] == min(2 * fetches[0], chunks) and fetches[0] < chunks
