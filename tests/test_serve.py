"""`simtool serve` over real HTTP on localhost: uvicorn in a thread, the real `openai` client, a tiny model."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from simtool.errors import SimtoolError
from simtool.serve.config import ServeConfig

KEY = "s3cret-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(config: ServeConfig) -> Iterator[str]:
    import uvicorn

    from simtool.serve.app import create_app, load_embedder

    app = create_app(load_embedder(config), config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def open_server(tiny_st: Path) -> Iterator[str]:
    cfg = ServeConfig(
        model=str(tiny_st), port=_free_port(), device="cpu", max_inputs=8, max_text_chars=200, max_body_bytes=4096
    )
    yield from _start(cfg)


@pytest.fixture(scope="module")
def keyed_server(tiny_st: Path) -> Iterator[str]:
    yield from _start(ServeConfig(model=str(tiny_st), port=_free_port(), device="cpu", api_key=KEY))


def _reference(tiny_st: Path, texts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    from tests.conftest import run_cli

    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(texts) + "\n")
    code, _, err = run_cli(
        capsys, "encode", str(corpus), "-o", str(tmp_path / "v.npy"), "--model", str(tiny_st), "--json"
    )
    assert code == 0, err
    return np.load(tmp_path / "v.npy")


@pytest.mark.timeout(120)
def test_openai_client_float_and_base64_equal_simtool_encode(
    open_server: str, tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openai

    texts = ["the red cat sat", "python code error", "a slow boat at night"]
    reference = _reference(tiny_st, texts, tmp_path, capsys)
    client = openai.OpenAI(base_url=f"{open_server}/v1", api_key="unused")
    for fmt in ("float", "base64"):
        resp = client.embeddings.create(model="tiny", input=texts, encoding_format=fmt)  # type: ignore[arg-type]
        rows = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
        if fmt == "base64":  # asked for explicitly, the client hands back the string: little-endian float32
            rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]  # type: ignore[arg-type]
        got = np.array(rows)
        np.testing.assert_allclose(got, reference, atol=1e-6)
        assert resp.usage.prompt_tokens > len(texts)  # [CLS] and [SEP] at least, per text
    default = client.embeddings.create(model="tiny", input=texts[0])  # the client asks for base64 by default
    np.testing.assert_allclose(default.data[0].embedding, reference[0], atol=1e-6)


@pytest.mark.timeout(60)
def test_limits_give_json_errors(open_server: str) -> None:
    url = f"{open_server}/v1/embeddings"
    cases = [
        ({"input": ["a cat"] * 9, "model": "m"}, 413, "too_many_inputs"),
        ({"input": "cat " * 100, "model": "m"}, 413, "text_too_long"),
        ({"input": [], "model": "m"}, 422, None),
        ({"input": [1, 2, 3], "model": "m"}, 422, None),
        ({"input": "a cat", "encoding_format": "int8"}, 422, None),
        ({"input": "a cat", "dimensions": 4}, 400, "dimensions_not_supported"),
    ]
    for body, status, code in cases:
        r = httpx.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["message"]
        if code:
            assert r.json()["error"]["code"] == code
    big = httpx.post(url, content=b'{"input": "' + b"a" * 5000 + b'"}', headers={"content-type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert httpx.post(url, content=b"{not json").status_code == 422
    assert "not ordered by variance" in httpx.post(url, json={"input": "a", "dimensions": 4}).json()["error"]["message"]


@pytest.mark.timeout(60)
def test_concurrent_requests_are_batched_and_metrics_count_them(open_server: str, tiny_st: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from simtool.encoder import load_encoder

    texts = [f"the {w} cat number {i}" for i, w in enumerate(["red", "big", "old", "new"] * 8)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: httpx.post(f"{open_server}/v1/embeddings", json={"input": t}), texts))
    got = np.array([r.json()["data"][0]["embedding"] for r in results])
    # a batched encode pads to the longest text; the attention mask keeps each row equal to a lone encode
    np.testing.assert_allclose(got, load_encoder(str(tiny_st), device="cpu").encode(texts), atol=1e-5)
    metrics = httpx.get(f"{open_server}/metrics").text
    assert 'simtool_requests_total{route="/v1/embeddings",method="POST",status="200"}' in metrics
    assert "simtool_queue_depth 0" in metrics
    count = next(line for line in metrics.splitlines() if line.startswith("simtool_batch_requests_count"))
    inputs = next(line for line in metrics.splitlines() if line.startswith("simtool_batch_inputs_sum"))
    assert float(inputs.split()[1]) >= 32 and int(count.split()[1]) >= 1
    models = httpx.get(f"{open_server}/v1/models").json()
    assert models["data"][0]["dimensions"] == len(got[0])


@pytest.mark.timeout(60)
def test_api_key_guards_every_route_but_health(keyed_server: str) -> None:
    import openai

    assert httpx.get(f"{keyed_server}/health").status_code == 200
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(f"{keyed_server}{path}").status_code == 401
        assert httpx.get(f"{keyed_server}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{keyed_server}{path}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed_server}/v1", api_key="wrong").embeddings.create(model="m", input="a cat")
    ok = openai.OpenAI(base_url=f"{keyed_server}/v1", api_key=KEY).embeddings.create(model="m", input="a cat")
    assert len(ok.data[0].embedding) > 0


def test_non_loopback_host_needs_a_key() -> None:
    with pytest.raises(SimtoolError, match="not a loopback"):
        ServeConfig(host="0.0.0.0").check()
    ServeConfig(host="0.0.0.0", api_key=KEY).check()
    ServeConfig(host="::1").check()


def test_full_queue_is_refused() -> None:
    from simtool.serve.batcher import DynamicBatcher, QueueFullError

    release = threading.Event()

    def slow(texts: list[str], dims: int | None) -> np.ndarray:
        release.wait(10)
        return np.zeros((len(texts), 2), dtype=np.float32)

    batcher = DynamicBatcher(slow, max_queue=2, max_wait_ms=0)
    first = batcher.submit(["a"], 3)
    deadline = time.monotonic() + 5
    while batcher.depth and time.monotonic() < deadline:  # the worker holds the first job in its encode
        time.sleep(0.01)
    batcher.submit(["b"], 3)
    batcher.submit(["c"], 3)
    with pytest.raises(QueueFullError, match="full"):
        batcher.submit(["d"], 3)
    release.set()
    batcher.close(5)
    assert first.result(5).shape == (1, 2)


def test_batcher_packs_within_the_token_budget() -> None:
    from simtool.serve.batcher import DynamicBatcher

    sizes: list[int] = []
    gate = threading.Event()

    def encode(texts: list[str], dims: int | None) -> np.ndarray:
        gate.wait(10)
        sizes.append(len(texts))
        return np.arange(len(texts), dtype=np.float32)[:, None]

    batcher = DynamicBatcher(encode, max_batch_tokens=10, max_wait_ms=50)
    futures = [batcher.submit([str(i)], 4) for i in range(6)]  # 4 tokens each: at most 2 per batch
    gate.set()
    batcher.close(5)
    assert all(f.result(1).shape == (1, 1) for f in futures)
    assert max(sizes) <= 2 and sum(sizes) == 6


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_finishes_in_flight_requests_then_exits(tiny_st: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    # a 1.5 s batching wait keeps the request in flight when SIGTERM arrives
    cmd = [
        sys.executable,
        "-m",
        "simtool",
        "serve",
        "--model",
        str(tiny_st),
        "--port",
        str(port),
        "--max-wait-ms",
        "1500",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "a cat"}, timeout=30)
            )
        )
        thread.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert result["r"].status_code == 200 and len(result["r"].json()["data"][0]["embedding"]) > 0
        # uvicorn re-raises SIGTERM once it has drained, so the exit is by the signal, not a crash
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


# --- /v1/search and /v1/documents over a live index -------------------------------------------------------


TOPICS = ["cats", "code", "boats"]


@pytest.fixture(scope="module")
def index_path(tiny_st: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from simtool.corpus import Document
    from simtool.encoder import load_encoder
    from simtool.index import build_index

    words = ["red", "cat", "python", "code", "boat", "night", "slow", "error", "sea", "dog", "sun", "tree"]
    docs = [
        Document(
            id=f"d{i}",
            title=f"title {words[i % len(words)]}",
            text=" ".join(words[(i * j) % len(words)] for j in range(1, 8)),
            metadata={"topic": TOPICS[i % 3], "year": 2020 + i % 4},
        )
        for i in range(30)
    ]
    path = tmp_path_factory.mktemp("serve-index") / "idx"
    build_index(docs, path, model=load_encoder(tiny_st, device="cpu"), progress=False)
    return path


@pytest.fixture(scope="module")
def index_server(index_path: Path) -> Iterator[str]:
    cfg = ServeConfig(index_dir=str(index_path), port=_free_port(), device="cpu", max_inputs=8, max_text_chars=300)
    yield from _start(cfg)


def _search(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/search", json=body, timeout=30)


def _reference_search(index_path: Path, queries: list[str], k: int, flt: dict | None = None) -> list[list[dict]]:
    """A fresh in-process Retriever on the same directory: what the server's answers must equal."""
    from simtool.retriever import Retriever

    with Retriever.load(index_path, device="cpu") as r:
        return [[h.to_json() for h in hits] for hits in r.search(queries, k, filter=flt)]


def _same_results(got: list[dict], want: list[dict]) -> None:
    assert [(h["rank"], h["id"], h["title"], h["text"], h["metadata"]) for h in got] == [
        (h["rank"], h["id"], h["title"], h["text"], h["metadata"]) for h in want
    ]
    # a dynamic batch pads queries to its longest one; the attention mask keeps scores equal to float error
    np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)


@pytest.mark.timeout(120)
def test_search_sees_add_upsert_and_delete(index_server: str, index_path: Path) -> None:
    new = {"id": "n1", "text": "a purple submarine sings", "title": "odd", "metadata": {"topic": "new"}}
    r = httpx.post(f"{index_server}/v1/documents", json={"documents": [new]}, timeout=30)
    assert r.status_code == 200, r.text
    added = r.json()
    assert added["added"] == 1 and added["deleted"] == 0
    assert httpx.get(f"{index_server}/health").json()["index_generation"] == added["generation"]
    hits = _search(index_server, query="odd a purple submarine sings", k=3).json()["results"]
    assert hits[0]["id"] == "n1" and hits[0]["metadata"] == {"topic": "new"}
    _same_results(hits, _reference_search(index_path, ["odd a purple submarine sings"], 3)[0])

    changed = {"id": "n1", "text": "the sea at night", "metadata": {"topic": "changed"}}
    r = httpx.post(f"{index_server}/v1/documents", json={"documents": [changed]}, timeout=30)  # replace: default
    assert r.status_code == 200 and r.json()["deleted"] == 1 and r.json()["generation"] > added["generation"]
    hits = _search(index_server, query="the sea at night", k=40).json()["results"]
    mine = [h for h in hits if h["id"] == "n1"]
    assert len(mine) == 1 and mine[0]["text"] == "the sea at night" and mine[0]["title"] is None
    _same_results(hits, _reference_search(index_path, ["the sea at night"], 40)[0])

    dup = httpx.post(f"{index_server}/v1/documents", json={"documents": [changed], "on_duplicate": "error"}, timeout=30)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "duplicate_id"
    skip = httpx.post(f"{index_server}/v1/documents", json={"documents": [new], "on_duplicate": "skip"}, timeout=30)
    assert skip.status_code == 200 and skip.json()["skipped"] == 1 and skip.json()["added"] == 0

    r = httpx.request("DELETE", f"{index_server}/v1/documents", json={"ids": ["n1", "nope"]}, timeout=30)
    assert r.status_code == 200 and r.json()["deleted"] == 1 and r.json()["missing"] == ["nope"]
    hits = _search(index_server, query="the sea at night", k=40).json()["results"]
    assert "n1" not in [h["id"] for h in hits] and len(hits) == 30


@pytest.mark.timeout(120)
def test_batch_queries_and_filters_equal_an_in_process_retriever(index_server: str, index_path: Path) -> None:
    queries = ["red cat", "python code error", "slow boat"]
    flt = {"topic": {"$in": ["cats", "code"]}, "year": {"$gte": 2021}}
    r = _search(index_server, queries=queries, k=5, filter=flt)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["query"] for d in data] == queries
    want = _reference_search(index_path, queries, 5, flt)
    for got, ref in zip(data, want, strict=True):
        assert got["results"] and all(
            h["metadata"]["topic"] in ("cats", "code") and h["metadata"]["year"] >= 2021 for h in got["results"]
        )
        _same_results(got["results"], ref)
    single = _search(index_server, query="red cat", k=5, filter=flt).json()
    assert set(single) == {"query", "results"}
    _same_results(single["results"], want[0])


@pytest.mark.timeout(60)
def test_search_and_documents_refuse_bad_requests(index_server: str) -> None:
    bad_filter = _search(index_server, query="cat", filter={"year": {"$near": 3}})
    assert bad_filter.status_code == 400 and bad_filter.json()["error"]["param"] == "filter"
    assert "$near" in bad_filter.json()["error"]["message"]
    assert _search(index_server, query="cat", filter=[1]).json()["error"]["param"] == "filter"
    cases = [
        ({"query": "cat", "k": 0}, 422, "k"),
        ({"query": "cat", "k": "3"}, 422, "k"),
        ({"query": "cat", "queries": ["dog"]}, 422, "query"),
        ({"queries": []}, 422, "queries"),
        ({"queries": ["a cat"] * 9}, 413, "queries"),
        ({"query": "cat " * 100}, 413, "query"),
        ({"query": "  "}, 422, "query"),
    ]
    for body, status, param in cases:
        r = _search(index_server, **body)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), (body, r.text)
    url = f"{index_server}/v1/documents"
    docs_cases = [
        ({"documents": [{"id": f"x{i}", "text": "a cat"} for i in range(9)]}, 413),
        ({"documents": [{"id": "x", "text": "cat " * 100}]}, 413),
        ({"documents": [{"text": "no id"}]}, 422),
        ({"documents": [{"id": "x", "text": "a", "metadata": [1]}]}, 422),
        ({"documents": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]}, 422),
        ({"documents": [{"id": "x", "text": "a"}], "on_duplicate": "merge"}, 422),
    ]
    for body, status in docs_cases:
        r = httpx.post(url, json=body)
        assert r.status_code == status and r.json()["error"]["message"], (body, r.text)
    assert httpx.request("DELETE", url, json={"ids": []}).json()["error"]["param"] == "ids"
    big = httpx.post(url, content=b'{"documents": "' + b"a" * (9 * 2**20) + b'"}')
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"


@pytest.mark.timeout(120)
def test_v1_search_equals_simtool_search_json(
    index_server: str, index_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from tests.conftest import run_cli

    flt = {"topic": "boats"}
    code, out, err = run_cli(
        capsys, "search", "slow boat at night", "--index-dir", str(index_path), "-k", "4", "--json",
        "--filter", json.dumps(flt),
    )  # fmt: skip
    assert code == 0, err
    cli = json.loads(out.strip().splitlines()[-1])
    served = _search(index_server, query="slow boat at night", k=4, filter=flt).json()
    assert set(served) | {"backend"} == set(cli) and served["query"] == cli["query"]  # the CLI adds its backend
    assert [set(h) for h in served["results"]] == [set(h) for h in cli["results"]]
    _same_results(served["results"], cli["results"])
    np.testing.assert_allclose(
        [h["distance"] for h in served["results"]], [h["distance"] for h in cli["results"]], atol=1e-5
    )


@pytest.mark.timeout(60)
def test_index_routes_need_the_key_and_an_index(keyed_server: str, open_server: str) -> None:
    calls = [("POST", "/v1/search", {"query": "cat"}), ("POST", "/v1/documents", {"documents": []}),
             ("DELETE", "/v1/documents", {"ids": ["a"]})]  # fmt: skip
    for method, path, body in calls:
        assert httpx.request(method, f"{keyed_server}{path}", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.request(method, f"{keyed_server}{path}", json=body, headers=wrong).status_code == 401
        ok = httpx.request(method, f"{keyed_server}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 404 and "--index-dir" in ok.json()["error"]["message"]
        assert httpx.request(method, f"{open_server}{path}", json=body).json()["error"]["code"] == "no_index"


def _spawn_server(*args: str) -> tuple[Any, str]:
    import os
    import subprocess
    import sys

    port = _free_port()
    cmd = [sys.executable, "-m", "simtool", "serve", "--port", str(port), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_during_document_writes_loses_no_acknowledged_write(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import random
    import signal

    from simtool.corpus import Document
    from simtool.encoder import load_encoder
    from simtool.index import build_index
    from simtool.retriever import Retriever
    from tests.conftest import run_cli

    path = tmp_path / "idx"
    build_index([Document(id="init", text="the first document")], path, model=load_encoder(tiny_st), progress=False)
    rng = random.Random(3)
    acked: dict[str, str] = {}
    lock = threading.Lock()
    for trial in range(2):  # the second server also recovers what the first kill left
        proc, url = _spawn_server("--index-dir", str(path))
        stop = threading.Event()

        def client(c: int, url: str = url, trial: int = trial, stop: threading.Event = stop) -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                for n in range(10_000):  # bounded; the kill ends it long before
                    if stop.is_set():
                        return
                    docs = [{"id": f"t{trial}c{c}n{n}d{j}", "text": f"text {trial} {c} {n} {j}"} for j in range(3)]
                    try:
                        r = http.post("/v1/documents", json={"documents": docs})
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        with lock:
                            acked.update((d["id"], d["text"]) for d in docs)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        before = len(acked)
        deadline = time.monotonic() + 30
        while len(acked) < before + 15 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(30)
        assert len(acked) >= before + 15, "the server acknowledged too few writes to test anything"
        with Retriever.load(path, load_model=False) as r:
            _, live = r.live_vectors()
            docs = r.get(sorted(acked))
        assert len(live) == len(set(live))
        assert set(acked) <= set(live), f"{len(set(acked) - set(live))} acknowledged documents lost"
        assert {i: d.text for i, d in docs.items()} == acked
    code, out, err = run_cli(capsys, "index", "verify", "--index-dir", str(path), "--json")
    assert code == 0, out + err


@pytest.mark.timeout(120)
def test_whitened_index_server_embeds_writes_and_searches_through_its_reducers(tiny_st: Path, tmp_path: Path) -> None:
    import random

    from simtool.corpus import Document
    from simtool.index import build_index
    from simtool.reduce.workflows import whiten_index
    from simtool.retriever import Retriever
    from tests.conftest import WORDS

    rng = random.Random(5)
    path = tmp_path / "idx"
    docs = [Document(id=f"d{i}", text=" ".join(rng.choices(WORDS, k=8))) for i in range(80)]
    build_index(docs, path, model=str(tiny_st), progress=False)
    whiten_index(path, dim=12, progress=False)
    texts = ["the red cat", "python code error"]
    with Retriever.load(path, device="cpu") as r:
        reference = r.encode(texts)
    assert reference.shape == (2, 12)
    for url in _start(ServeConfig(index_dir=str(path), port=_free_port(), device="cpu")):
        got = httpx.post(f"{url}/v1/embeddings", json={"input": texts}).json()["data"]
        np.testing.assert_allclose([d["embedding"] for d in got], reference, atol=1e-5)
        short = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "dimensions": 6})
        assert short.status_code == 200 and len(short.json()["data"][0]["embedding"]) == 6
        assert httpx.post(f"{url}/v1/documents", json={"documents": [{"id": "z", "text": "zebra"}]}).status_code == 200
        (hit,) = _search(url, query="zebra", k=1).json()["results"]
        # the document was encoded raw and reduced by the index, the query by the server: the same vector
        assert hit["id"] == "z" and hit["score"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.timeout(120)
def test_searches_racing_writes_see_only_whole_commits(index_server: str) -> None:
    seen: list[set[str]] = []
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=index_server, timeout=30) as http:
            while not done.is_set():
                r = http.post("/v1/search", json={"query": "red cat", "k": 100})
                if r.status_code != 200:
                    errors.append(r.text)
                    continue
                ids = [h["id"] for h in r.json()["results"]]
                if len(ids) != len(set(ids)):
                    errors.append(f"duplicate ids {ids}")
                seen.append({i for i in ids if i.startswith("race")})

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    url = f"{index_server}/v1/documents"
    for n in range(6):  # each commit adds a pair: a reader sees both of a pair or neither
        pair = [{"id": f"race{n}a", "text": f"pair {n} left"}, {"id": f"race{n}b", "text": f"pair {n} right"}]
        assert httpx.post(url, json={"documents": pair}, timeout=30).status_code == 200
    ids = [f"race{n}{s}" for n in range(6) for s in "ab"]
    for half in (ids[:6], ids[6:]):  # within max_inputs=8
        assert httpx.request("DELETE", url, json={"ids": half}, timeout=30).json()["deleted"] == 6
    done.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    prefixes = [set(ids[: 2 * n]) for n in range(7)] + [set(ids[6:])]
    assert seen and all(s in prefixes for s in seen), [sorted(s) for s in seen if s not in prefixes][:3]
    final = httpx.post(f"{index_server}/v1/search", json={"query": "red cat", "k": 100}).json()["results"]
    assert not [h for h in final if h["id"].startswith("race")]


def test_index_write_with_precomputed_vectors_keeps_the_rows_it_adds(tiny_st: Path, tmp_path: Path) -> None:
    from simtool.corpus import Document
    from simtool.encoder import load_encoder
    from simtool.errors import SimtoolError as Err
    from simtool.index import Index, build_index
    from simtool.retriever import Retriever

    encoder = load_encoder(tiny_st, device="cpu")
    build_index([Document(id="a", text="first"), Document(id="b", text="second")], tmp_path / "i", model=encoder)
    rng = np.random.default_rng(0)
    given = rng.standard_normal((3, 32)).astype(np.float32)
    docs = [Document(id=i, text=f"text {i}") for i in ("b", "c", "d")]
    result = Index(tmp_path / "i", encoder=encoder).write(docs, vectors=given, on_duplicate="skip")
    assert (result.added, result.skipped) == (2, 1)
    with Retriever.load(tmp_path / "i", load_model=False) as r:
        raw, ids = r.live_vectors()
    rows = dict(zip(ids, raw, strict=True))
    np.testing.assert_array_equal(np.stack([rows["c"], rows["d"]]), given[1:])  # b kept its old vector
    np.testing.assert_allclose(rows["b"], encoder.encode(["second"])[0], atol=1e-6)
    with pytest.raises(Err, match="vectors has 2 rows for 3 documents"):
        Index(tmp_path / "i", encoder=encoder).write(docs, vectors=given[:2])


@pytest.mark.timeout(120)
def test_server_follows_a_whitening_published_by_another_writer(tiny_st: Path, tmp_path: Path) -> None:
    import random

    from simtool.corpus import Document
    from simtool.index import build_index
    from simtool.reduce.workflows import whiten_index
    from simtool.retriever import Retriever
    from tests.conftest import WORDS

    rng = random.Random(6)
    path = tmp_path / "idx"
    docs = [Document(id=f"d{i}", text=" ".join(rng.choices(WORDS, k=8))) for i in range(60)]
    build_index(docs, path, model=str(tiny_st), progress=False)
    for url in _start(ServeConfig(index_dir=str(path), port=_free_port(), device="cpu")):
        assert len(_search(url, query="red cat", k=3).json()["results"]) == 3
        whiten_index(path, dim=10, progress=False)  # a second writer while the server runs
        served = _search(url, query="red cat", k=3)
        assert served.status_code == 200, served.text
        with Retriever.load(path, device="cpu") as r:
            reference = [h.to_json() for h in r.search("red cat", 3)]
            want = r.encode(["red cat"])
        _same_results(served.json()["results"], reference)
        got = httpx.post(f"{url}/v1/embeddings", json={"input": "red cat"}).json()["data"][0]["embedding"]
        np.testing.assert_allclose(got, want[0], atol=1e-5)
