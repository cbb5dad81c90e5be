"""The live index: add / delete / upsert / compact as segments and commits, checked against fresh builds."""

from __future__ import annotations

import random
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simtool.corpus import Document
from simtool.errors import IndexDirError, SimtoolError
from simtool.filters import FilterError, compile_filter, matches, parse_filter
from simtool.index import EncodedPart, Index, build_index, index_info, merge_plan, verify_index
from simtool.locks import WriterLock
from simtool.manifest import Manifest, committed_generations
from simtool.retriever import Retriever
from simtool.segments import SegmentInfo
from tests.conftest import WORDS

QUERIES = ["the red cat sat", "python code runs", "a big bus at night", "rain in the city"]


def make_docs(ids: list[int], version: int = 0) -> list[Document]:
    """Deterministic documents; ``version`` changes the text of the same id (for upserts)."""
    out = []
    for i in ids:
        rng = random.Random(i * 1000 + version)
        out.append(
            Document(
                id=f"d{i}",
                text=" ".join(rng.choices(WORDS, k=10)) + f" {i} v{version}",
                metadata={"source": rng.choice(["docs", "web", "mail"]), "year": rng.randint(2018, 2023)},
            )
        )
    return out


def _fresh(tmp_path: Path, encoder: Any, docs: list[Document], name: str = "fresh") -> Path:
    out = tmp_path / name
    build_index(docs, out, model=encoder, factory="Flat", progress=False)
    return out


def assert_same_results(a: list[list[Any]], b: list[list[Any]]) -> None:
    """Same hits: ids exactly (up to the order of tied scores) and scores within 1e-6."""
    for ha, hb in zip(a, b, strict=True):
        assert len(ha) == len(hb)
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6)
        ga: dict[float, set[str]] = {}
        gb: dict[float, set[str]] = {}
        for h in ha:
            ga.setdefault(round(h.score, 5), set()).add(h.id)
        for h in hb:
            gb.setdefault(round(h.score, 5), set()).add(h.id)
        assert [h.id for h in ha] == [h.id for h in hb] or ga == gb


# --- equivalence with a fresh build ---------------------------------------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["add", "delete", "upsert", "compact"]),
        st.lists(st.integers(0, 59), min_size=1, max_size=12, unique=True),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_sequence_of_writes_searches_like_a_fresh_flat_build(
    ops: list[tuple[str, list[int]]], tmp_path_factory: pytest.TempPathFactory, encoder: Any
) -> None:
    tmp = tmp_path_factory.mktemp("eq")
    live: dict[str, Document] = {d.id: d for d in make_docs(list(range(20)))}
    build_index(list(live.values()), tmp / "idx", model=encoder, factory="Flat", progress=False)
    index = Index(tmp / "idx", encoder=encoder, merge_factor=3)
    generation = index.generation
    for step, (op, ids) in enumerate(ops):
        if op == "add":
            docs = [d for d in make_docs(ids) if d.id not in live]
            new = index.add(docs)
            live.update((d.id, d) for d in docs)
        elif op == "delete":
            new = index.delete([f"d{i}" for i in ids])
            for i in ids:
                live.pop(f"d{i}", None)
        elif op == "upsert":
            docs = make_docs(ids, version=step + 1)
            new = index.upsert(docs)
            live.update((d.id, d) for d in docs)
        else:
            new = index.compact()
        assert new >= generation
        generation = new
    assert Manifest.load(tmp / "idx").count == len(live)
    if not live:
        with Retriever.load(tmp / "idx", encoder=encoder) as r:
            assert r.search(QUERIES, k=5) == [[] for _ in QUERIES]
        return
    fresh = _fresh(tmp, encoder, list(live.values()))
    k = min(7, len(live))
    with Retriever.load(tmp / "idx", encoder=encoder) as r, Retriever.load(fresh, encoder=encoder) as f:
        got, want = r.search(QUERIES, k=k), f.search(QUERIES, k=k)
        assert_same_results(got, want)
        for hits in got:  # what comes back is the current version of each document
            assert all(h.text == live[h.id].text for h in hits)
        assert_same_results(r.search(QUERIES, k=100), f.search(QUERIES, k=100))


@pytest.mark.parametrize("factory", ["HNSW16,Flat", "IVF8,Flat", "PQ4"])
def test_deleted_documents_never_come_back_and_k_still_does(tmp_path: Path, encoder: Any, factory: str) -> None:
    docs = make_docs(list(range(400)))
    build_index(docs, tmp_path / "idx", model=encoder, factory=factory, progress=False)
    index = Index(tmp_path / "idx", encoder=encoder)
    doomed = [d.id for d in docs[:360]]
    index.delete(doomed)
    with Retriever.load(tmp_path / "idx", encoder=encoder, search_params={"nprobe": 1}) as r:
        for hits in r.search(QUERIES, k=30):
            assert len(hits) == 30 and not {h.id for h in hits} & set(doomed)
        every = r.search("x", k=100)
    assert {h.id for h in every} == {d.id for d in docs[360:]}


def test_small_adds_to_a_trained_index_are_exact_segments(tmp_path: Path, encoder: Any) -> None:
    build_index(make_docs(list(range(600))), tmp_path / "idx", model=encoder, factory="IVF4,Flat", progress=False)
    index = Index(tmp_path / "idx", encoder=encoder)
    index.add(make_docs([1000, 1001]))
    segments = index.manifest.segments
    assert [s.factory for s in segments] == ["IVF4,Flat", "Flat"]  # 2 rows cannot train 4 lists
    index.compact()
    (merged,) = index.manifest.segments
    assert merged.factory == "IVF4,Flat" and merged.count == 602


def test_add_delete_upsert_return_generations_and_report(tmp_path: Path, encoder: Any) -> None:
    idx = _fresh(tmp_path, encoder, make_docs(list(range(10))), "idx")
    index = Index(idx, encoder=encoder)
    g1 = index.add(make_docs([10, 11]))
    g2 = index.delete(["d0", "nope"])
    g3 = index.upsert(make_docs([1, 12], version=5))
    assert (g1, g2, g3) == (2, 3, 4)
    res = index.write((), delete=["d2", "zz"])
    assert (res.deleted, res.missing, res.generation) == (1, ["zz"], 5)
    assert index.write((), delete=["zz"]).generation == 5  # nothing changed: no new generation
    with pytest.raises(SimtoolError, match=r"1 id\(s\) already in the index \(first: 'd3'\)"):
        index.add(make_docs([3]))
    with pytest.raises(SimtoolError, match="duplicate id 'd20'"):
        index.add(make_docs([20, 20]))
    assert index.add(make_docs([3, 13]), on_duplicate="skip") == 6
    with Retriever.load(idx, encoder=encoder) as r:
        got = r.get(["d1", "d0", "d13", "d3"])
    assert set(got) == {"d1", "d13", "d3"} and got["d1"].text.endswith("v5")
    assert index_info(idx)["count"] == 12


def test_append_commits_parts_encoded_elsewhere_once(tmp_path: Path, encoder: Any) -> None:
    from simtool.encoder import encode_texts

    idx = _fresh(tmp_path, encoder, make_docs([0]), "idx")
    parts = []
    for shard in ([1, 2, 3], [4, 5]):
        docs = make_docs(shard)
        parts.append(EncodedPart(docs, encode_texts(encoder, [d.encoded_text for d in docs])))
    index = Index(idx)
    assert index.append(parts) == 2  # both parts in one generation
    fresh = _fresh(tmp_path, encoder, make_docs([0, 1, 2, 3, 4, 5]))
    with Retriever.load(idx, encoder=encoder) as r, Retriever.load(fresh, encoder=encoder) as f:
        assert_same_results(r.search(QUERIES, k=6), f.search(QUERIES, k=6))


# --- merge policy ----------------------------------------------------------------------------------


def test_merge_plan_is_tiered_and_rewrites_mostly_deleted_segments() -> None:
    def seg(n: int, deleted: int = 0) -> SegmentInfo:
        return SegmentInfo(name=f"s{n}-{deleted}-{random.random()}", count=n, factory="Flat", deleted=deleted)

    small = [seg(100 + i) for i in range(9)]
    assert merge_plan([seg(1_000_000), *small]) == []  # 9 in a tier: under the factor
    tenth = seg(150)
    assert merge_plan([seg(1_000_000), *small, tenth]) == [[*small, tenth]]
    gutted = seg(1000, deleted=600)
    assert merge_plan([gutted, seg(5)]) == [[gutted]]


def test_auto_merge_bounds_the_segment_count(tmp_path: Path, encoder: Any) -> None:
    idx = _fresh(tmp_path, encoder, make_docs(list(range(200))), "idx")
    index = Index(idx, encoder=encoder, merge_factor=4)
    for b in range(9):
        index.add(make_docs([1000 + 3 * b, 1001 + 3 * b, 1002 + 3 * b]))
        assert len(index.manifest.segments) <= 1 + 3 * 2  # at most factor-1 per tier
    assert index.manifest.count == 227


# --- snapshots, threads, locks, garbage --------------------------------------------------------------


def test_a_retriever_is_a_snapshot_until_refresh(tmp_path: Path, encoder: Any) -> None:
    idx = _fresh(tmp_path, encoder, make_docs(list(range(30))), "idx")
    index = Index(idx, encoder=encoder)
    with Retriever.load(idx, encoder=encoder) as r:
        before = r.search(QUERIES, k=10)
        index.delete([h.id for h in before[0][:5]])
        index.add(make_docs([100, 101, 102]))
        index.compact()  # the snapshot's segment files are now unreferenced by the newest generation
        assert r.search(QUERIES, k=10) == before and r.generation == 1
        assert r.refresh() == index.generation == 4
        after = r.search(QUERIES, k=10)
    fresh = _fresh(
        tmp_path,
        encoder,
        [d for d in make_docs([*range(30), 100, 101, 102]) if d.id not in {h.id for h in before[0][:5]}],
    )
    with Retriever.load(fresh, encoder=encoder) as f:
        assert_same_results(after, f.search(QUERIES, k=10))


def test_files_of_old_generations_live_as_long_as_a_reader_holds_them(tmp_path: Path, encoder: Any) -> None:
    idx = _fresh(tmp_path, encoder, make_docs(list(range(30))), "idx")
    index = Index(idx, encoder=encoder)
    old_segment = index.manifest.segments[0].name
    reader = Retriever.load(idx, encoder=encoder)
    index.compact()
    index.add(make_docs([99]))
    assert (idx / "segments" / old_segment).is_dir() and 1 in committed_generations(idx)
    reader.close()
    index.add(make_docs([98]))
    assert not (idx / "segments" / old_segment).exists() and committed_generations(idx) == [index.generation]


def test_one_retriever_is_safe_to_share_across_threads(tmp_path: Path, encoder: Any) -> None:
    idx = _fresh(tmp_path, encoder, make_docs(list(range(50))), "idx")
    index = Index(idx, encoder=encoder)
    errors: list[str] = []
    stop = threading.Event()
    with Retriever.load(idx, encoder=encoder) as r:

        def search() -> None:
            try:
                while not stop.is_set():
                    for hits in r.search(QUERIES, k=5, filter={"source": "docs"}):
                        assert all(h.metadata["source"] == "docs" for h in hits), [h.metadata for h in hits]
            except BaseException:
                errors.append(traceback.format_exc())  # the whole stack: a bare exception repr says too little

        threads = [threading.Thread(target=search) for _ in range(4)]
        for t in threads:
            t.start()
        for b in range(5):
            index.add(make_docs([200 + b]))
            r.refresh()
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[0]


def test_a_second_writer_waits_then_names_the_holder(tmp_path: Path, encoder: Any) -> None:
    import os

    idx = _fresh(tmp_path, encoder, make_docs([1]), "idx")
    with WriterLock(idx), pytest.raises(IndexDirError, match=rf"another writer \(pid {os.getpid()}\) holds write"):
        Index(idx, encoder=encoder, lock_timeout=0.2).add(make_docs([2]))
    assert Index(idx, encoder=encoder).add(make_docs([2])) == 2


# --- filters -----------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.sampled_from(["docs", "web", "mail", "Docs", ""]),
    st.integers(2017, 2024),
    st.sampled_from([0.5, 2020.0, -1.5]),
    st.booleans(),
    st.none(),
)
FIELDS = st.sampled_from(["source", "year", "flag", "score", "missing", 'we"ird.key'])


def _leaf() -> st.SearchStrategy[dict[str, Any]]:
    cmp = st.sampled_from(["$gt", "$gte", "$lt", "$lte"])
    return st.one_of(
        st.builds(lambda f, v: {f: v}, FIELDS, SCALARS),
        st.builds(lambda f, v: {f: {"$eq": v}}, FIELDS, SCALARS),
        st.builds(lambda f, v: {f: {"$ne": v}}, FIELDS, SCALARS),
        st.builds(lambda f, v: {f: {"$in": v}}, FIELDS, st.lists(SCALARS, min_size=1, max_size=3)),
        st.builds(lambda f, v: {f: {"$nin": v}}, FIELDS, st.lists(SCALARS, min_size=1, max_size=3)),
        st.builds(
            lambda f, o, v: {f: {o: v}},
            FIELDS,
            cmp,
            st.one_of(st.integers(2017, 2024), st.sampled_from(["docs", "m", 0.5])),
        ),
    )


FILTERS = st.recursive(
    _leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda a, b: {**a, **b}, inner, inner),
    ),
    max_leaves=5,
)


def _random_metadata(rng: random.Random) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for field, values in (
        ("source", ["docs", "web", "mail", "Docs", ""]),
        ("year", [2018, 2019, 2020, 2021, 2022, 2020.0]),
        ("flag", [True, False, None, 1, 0]),
        ("score", [0.5, -1.5, 3, "high"]),
        ('we"ird.key', ["docs", 2020]),
    ):
        if rng.random() < 0.8:
            meta[field] = rng.choice(values)
    return meta


@pytest.fixture(scope="module")
def filtered_index(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> tuple[Path, dict[str, dict[str, Any]]]:
    rng = random.Random(7)
    docs = [
        Document(id=f"m{i}", text=f"doc {i} " + " ".join(rng.choices(WORDS, k=6)), metadata=_random_metadata(rng))
        for i in range(150)
    ]
    idx = tmp_path_factory.mktemp("filters") / "idx"
    build_index(docs[:100], idx, model=encoder, progress=False)
    index = Index(idx, encoder=encoder)
    index.add(docs[100:])
    index.delete([f"m{i}" for i in range(0, 150, 10)])
    live = {d.id: d.metadata for d in docs if int(d.id[1:]) % 10}
    return idx, live


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filter=FILTERS)
def test_filters_match_a_brute_force_python_evaluation(
    filter: dict[str, Any], filtered_index: tuple[Path, dict[str, dict[str, Any]]], encoder: Any
) -> None:
    idx, live = filtered_index
    want = {i for i, meta in live.items() if matches(filter, meta)}
    with Retriever.load(idx, encoder=encoder) as r:
        got = r.search("doc", k=1000, filter=filter)
    assert {h.id for h in got} == want
    assert all(matches(filter, h.metadata) for h in got)


def test_a_filter_applies_before_top_k(filtered_index: tuple[Path, dict[str, dict[str, Any]]], encoder: Any) -> None:
    idx, live = filtered_index
    rare = {"source": "Docs", "year": {"$gte": 2021}}
    want = {i for i, m in live.items() if matches(rare, m)}
    assert 0 < len(want) < 20
    with Retriever.load(idx, encoder=encoder) as r:
        hits = r.search("doc", k=len(want), filter=json_text(rare))
    assert {h.id for h in hits} == want


def json_text(obj: Any) -> str:
    import json

    return json.dumps(obj)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"year": ', "filter is not valid JSON"),
        ("[1, 2]", "filter must be a JSON object, got a list"),
        ('{"year": {"$regex": "x"}}', r"filter.year: unknown operator '\$regex'"),
        ('{"$nor": []}', r"unknown operator '\$nor'"),
        ('{"year": {"$in": 2020}}', r"filter.year.\$in must be a non-empty list"),
        ('{"year": {"$gt": [1]}}', r"filter.year.\$gt needs a number or a string, got a list"),
        ('{"$or": {"a": 1}}', r"filter.\$or must be a non-empty list of filters"),
        ('{"a": {"b": 1}}', r"filter.a: unknown operator 'b'"),
    ],
)
def test_malformed_filters_are_one_line_errors(bad: str, message: str) -> None:
    with pytest.raises(FilterError, match=message) as info:
        parse_filter(bad)
    assert "\n" not in str(info.value)


def test_user_text_never_reaches_sql_as_sql() -> None:
    nasty = "x') OR 1=1; DROP TABLE docs; --"
    sql = compile_filter({nasty: nasty, "year": {"$in": [nasty, 1]}})
    assert nasty not in sql.where and nasty in sql.params[-1:] + sql.params
    assert matches({nasty: nasty}, {nasty: nasty}) and not matches({nasty: nasty}, {})


# --- corruption and old directories ---------------------------------------------------------------------


def test_truncated_segment_file_is_a_one_line_error_and_verify_names_flipped_bytes(
    tmp_path: Path, encoder: Any
) -> None:
    from tests.conftest import segment_file

    idx = _fresh(tmp_path, encoder, make_docs(list(range(20))), "idx")
    Index(idx, encoder=encoder).add(make_docs([50, 51]))
    for name in ("vectors.npy", "index.faiss", "docs.sqlite"):
        broken = tmp_path / f"trunc-{name}"
        import shutil

        shutil.copytree(idx, broken, ignore=shutil.ignore_patterns("*.lease", "write.lock"))
        path = segment_file(broken, name, segment=1)
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 3)
        with pytest.raises(IndexDirError, match=rf"{name}: \d+ bytes, the manifest records \d+") as info:
            Retriever.load(broken, encoder=encoder)
        assert "\n" not in str(info.value)
        flipped = tmp_path / f"flip-{name}"
        shutil.copytree(idx, flipped, ignore=shutil.ignore_patterns("*.lease", "write.lock"))
        path = segment_file(flipped, name, segment=0)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(IndexDirError, match=rf"segments/.*/{name}: checksum mismatch"):
            verify_index(flipped)
    assert verify_index(idx)["ok"]


def test_format_1_directories_are_refused_with_the_fix_then_upgraded(tmp_path: Path, encoder: Any) -> None:
    import json

    from simtool.index import upgrade_index
    from simtool.manifest import sha256_file

    # A format-1 directory, written the way simtool 0.x did: three files and a flat manifest.
    modern = _fresh(tmp_path, encoder, make_docs(list(range(12))), "modern")
    m = Manifest.load(modern)
    seg = m.segments[0]
    old = tmp_path / "old"
    old.mkdir()
    files = {}
    for name in ("index.faiss", "docs.sqlite", "vectors.npy"):
        (old / name).write_bytes((modern / "segments" / seg.name / name).read_bytes())
        files[name] = {"sha256": sha256_file(old / name), "bytes": (old / name).stat().st_size}
    v1 = {k: v for k, v in m.to_dict().items() if k not in ("generation", "segments")}
    v1.update(format_version=1, files=files)
    (old / "manifest.json").write_text(json.dumps(v1))
    with pytest.raises(IndexDirError, match=r"format 1 .* run `simtool index upgrade .*old`"):
        Retriever.load(old, encoder=encoder)
    upgraded = upgrade_index(old)
    assert upgraded.generation == 1 and upgraded.count == 12 and not (old / "index.faiss").exists()
    with Retriever.load(old, encoder=encoder) as r, Retriever.load(modern, encoder=encoder) as f:
        assert_same_results(r.search(QUERIES, k=5), f.search(QUERIES, k=5))
    assert verify_index(old)["ok"]
