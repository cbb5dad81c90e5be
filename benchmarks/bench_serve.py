"""Benchmark ``simtool serve``'s ``/v1/embeddings`` under concurrent single-sentence clients.

Three ways to embed the same sentences, interleaved in each round (order rotated every round):

* ``server``: ``simtool serve`` with dynamic batching; ``--clients`` keep-alive connections each POST one sentence
  at a time for ``--seconds`` seconds (bounded: every loop stops by itself), from one asyncio loop;
* ``unbatched``: the same server with ``--no-batching`` (one request, one encode), same clients;
* ``st``: in-process ``SentenceTransformer.encode(texts, batch_size=64)`` on the same sentences, same model;
* ``st1``: the same at ``batch_size=1`` on the first 300: batching's own gain, ``st / st1``, bounds what any server
  can gain over one request, one encode.

Prints texts/s, p50/p99 latency of the servers, and per-round ratios with their medians. Goals (issue 11):
server ≥ 0.8× st, and server ≥ 4× unbatched. Both servers are separate processes started once; the clients share
the machine with them, as clients on localhost do.

``--search``: ``/v1/search`` instead, on an index of the SciFact corpus (``<shared data>/beir/scifact``, built once
with the model into ``--cache-dir``); ``--search-clients`` (16) connections each POST one SciFact test query
(``{"query", "k": 10}``, batch 1) at a time for ``--seconds``; QPS, p50/p99, interleaved per round with the
competitor, the in-process ``Retriever.search(query, k=10)`` one query at a time on the same index.

Sentences: STS-B test (``<shared data>/stsb/sbert_format/stsbenchmark.tsv.gz``) when present, else the bundled
sample corpus. Run (from the repo root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py [--clients 32 --seconds 10 --rounds 3 --json]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py --search [--search-clients 16 --seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from harness import rotated

BUNDLED = Path(__file__).resolve().parents[1] / "simtool" / "data" / "python_reference.jsonl"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sentences(n: int) -> tuple[list[str], str]:
    path = shared_dir() / "stsb" / "sbert_format" / "stsbenchmark.tsv.gz"
    if path.exists():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r["split"] == "test"]
        texts = list(dict.fromkeys(s for r in rows for s in (r["sentence1"], r["sentence2"])))
        return texts[:n], f"STS-B test ({path})"
    with open(BUNDLED, encoding="utf-8") as f:
        texts = [json.loads(line)["text"][:300] for line in f]
    return texts[:n], f"bundled sample ({BUNDLED})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    model: str | None,
    batching: bool,
    max_wait_ms: float,
    index_dir: Path | None = None,
    threads: int | None = None,
    backend: str = "auto",
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "simtool", "serve", "--port", str(port), "--max-wait-ms", str(max_wait_ms)]
    cmd += ["--backend", backend]
    cmd += ["--index-dir", str(index_dir)] if index_dir else ["--model", model] if model else []
    cmd += [] if batching else ["--no-batching"]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with status {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy in 120 s")


def load(url: str, texts: list[str], clients: int, seconds: float, route: str = "/v1/embeddings") -> dict[str, float]:
    """``clients`` keep-alive connections, each posting one sentence (``route``: one query) per request until
    ``seconds`` pass. One asyncio loop writes prebuilt HTTP/1.1 requests, so the load generator costs a small
    part of a core: on 2 cores, 32 httpx threads took about as much CPU as the server they measured."""
    host, port = url.removeprefix("http://").split(":")
    requests = []
    for text in texts:
        body = json.dumps({"query": text, "k": 10} if route == "/v1/search" else {"input": text, "model": "bench"})
        data = body.encode()
        head = f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        requests.append(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    latencies: list[float] = []
    errors = 0

    async def client(i: int, stop_at: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        j = i
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(requests[j % len(requests)])
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                j += clients
        finally:
            writer.close()

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, start + seconds) for i in range(clients)))
        return time.perf_counter() - start

    wall = asyncio.run(run())
    lat = sorted(latencies)
    return {
        "texts_per_s": len(lat) / wall,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "requests": len(lat),
        "errors": errors,
    }


def in_process(model: Any, texts: list[str], batch_size: int = 64) -> dict[str, float]:
    t0 = time.perf_counter()
    model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    return {"texts_per_s": len(texts) / (time.perf_counter() - t0)}


def shared_dir() -> Path:
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def scifact_index(model: str | None, cache_dir: Path) -> tuple[Path, list[str]]:
    """The SciFact corpus indexed with ``model`` (built once into ``cache_dir``), and the test queries."""
    from simtool.index import build_index

    scifact = shared_dir() / "beir" / "scifact"
    if not (scifact / "corpus.jsonl").exists():
        raise SystemExit(f"bench_serve --search: needs {scifact}/corpus.jsonl (set SIMTOOL_SHARED_DATA)")
    name = Path(model).name if model else "all-MiniLM-L6-v2"
    index_dir = cache_dir / f"scifact-index-{name}"
    if not (index_dir / "manifest.json").exists():
        log(f"building the SciFact index in {index_dir} (once; cached)")
        build_index(scifact / "corpus.jsonl", index_dir, model=model, gpu=False, progress=True)
    test = {line.split("\t")[0] for line in (scifact / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    with open(scifact / "queries.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return index_dir, [r["text"] for r in rows if r["_id"] in test]


def in_process_search(retriever: Any, queries: list[str], seconds: float) -> dict[str, float]:
    """The competitor: ``Retriever.search(query, k=10)``, one query at a time, for ``seconds``."""
    lat = []
    start = time.perf_counter()
    for i in range(10**9):  # bounded by the clock below
        if time.perf_counter() - start >= seconds:
            break
        t0 = time.perf_counter()
        retriever.search(queries[i % len(queries)], 10)
        lat.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    lat.sort()
    return {
        "qps": len(lat) / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def bench_search(args: argparse.Namespace) -> None:
    from simtool.retriever import Retriever

    index_dir, queries = scifact_index(args.model, args.cache_dir)
    log(f"{len(queries)} SciFact test queries on {index_dir}; {args.search_clients} clients, {args.seconds:g} s")
    if args.threads:  # the same torch thread count for the server process and the in-process competitor
        import torch

        torch.set_num_threads(args.threads)
    proc, url = start_server(args.model, True, args.max_wait_ms, index_dir, args.threads)
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        with Retriever.load(index_dir, device="cpu") as retriever:
            served = httpx.post(url + "/v1/search", json={"query": queries[0], "k": 10}, timeout=60).json()
            local = [h.id for h in retriever.search(queries[0], 10)]
            same = [h["id"] for h in served["results"]] == local
            log(f"server and in-process top-10 ids agree on a query: {same}")
            load(url, queries, 4, 1.0, "/v1/search")  # warm-up
            in_process_search(retriever, queries, 1.0)
            for r in range(args.rounds):
                result = {}
                for m in ["server", "in_process"] if r % 2 == 0 else ["in_process", "server"]:
                    if m == "server":
                        out = load(url, queries, args.search_clients, args.seconds, "/v1/search")
                        out["qps"] = out.pop("texts_per_s")
                    else:
                        out = in_process_search(retriever, queries, args.seconds)
                    result[m] = out
                rounds.append(result)
                log(
                    f"round {r + 1}: server {result['server']['qps']:.0f} q/s p99 {result['server']['p99_ms']:.1f} ms"
                    f" ({result['server']['errors']:.0f} errors), in-process {result['in_process']['qps']:.0f} q/s"
                    f"; ratio {result['server']['qps'] / result['in_process']['qps']:.2f}"
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
    ratios = [r["server"]["qps"] / r["in_process"]["qps"] for r in rounds]
    summary = {
        "index": str(index_dir),
        "queries": len(queries),
        "clients": args.search_clients,
        "seconds": args.seconds,
        "threads": args.threads,
        "same_top10_ids": same,
        "rounds": rounds,
        "median_qps": {m: statistics.median(r[m]["qps"] for r in rounds) for m in ("server", "in_process")},
        "median_p50_ms": {m: statistics.median(r[m]["p50_ms"] for r in rounds) for m in ("server", "in_process")},
        "median_p99_ms": {m: statistics.median(r[m]["p99_ms"] for r in rounds) for m in ("server", "in_process")},
        "server_vs_in_process": {"per_round": ratios, "median": statistics.median(ratios)},
    }
    if args.json:
        print(json.dumps(summary))
        return
    q, p50, p99 = summary["median_qps"], summary["median_p50_ms"], summary["median_p99_ms"]
    print(
        f"/v1/search, {args.search_clients} clients, batch 1: {q['server']:.0f} q/s, "
        f"p50 {p50['server']:.1f} ms, p99 {p99['server']:.1f} ms"
    )
    print(
        f"in-process Retriever.search, batch 1: {q['in_process']:.0f} q/s, "
        f"p50 {p50['in_process']:.1f} ms, p99 {p99['in_process']:.1f} ms"
    )
    print(
        f"server / in-process: median {summary['server_vs_in_process']['median']:.2f}, per round "
        + ", ".join(f"{x:.2f}" for x in ratios)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model path (default: all-MiniLM-L6-v2)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each server load run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=2000, help="sentences")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the batching server's --max-wait-ms")
    p.add_argument(
        "--backend",
        default="torch",
        help="the servers' --backend; torch (default) encodes as the fp32 ST competitor does: the ratio is batching's",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--search", action="store_true", help="benchmark /v1/search on a SciFact index instead")
    p.add_argument("--search-clients", type=int, default=16)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the servers and of the in-process competitor",
    )
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "simtool-bench")
    args = p.parse_args()
    if args.search:
        bench_search(args)
        return

    from simtool.encoder import load_encoder

    texts, source = sentences(args.n)
    log(f"{len(texts)} sentences from {source}; {args.clients} clients, {args.seconds:g} s per run")
    model = load_encoder(args.model, device="cpu")
    if args.threads:  # the same torch thread count for the servers and the in-process competitor
        import torch

        torch.set_num_threads(args.threads)
    servers = {
        "server": start_server(args.model, True, args.max_wait_ms, threads=args.threads, backend=args.backend),
        "unbatched": start_server(args.model, False, args.max_wait_ms, threads=args.threads, backend=args.backend),
    }
    try:
        for url in (u for _, u in servers.values()):  # warm-up: first requests pay lazy initialisation
            load(url, texts, 4, 1.0)
        backend = httpx.get(servers["server"][1] + "/health", timeout=10).json()["backend"]
        log(f"servers encode with backend {backend}")
        in_process(model, texts[:256])
        rounds: list[dict[str, dict[str, float]]] = []
        methods = ["st", "st1", "server", "unbatched"]
        for r in range(args.rounds):
            order = rotated(methods, r)
            result = {}
            for m in order:
                if m == "st":
                    result[m] = in_process(model, texts)
                elif m == "st1":
                    result[m] = in_process(model, texts[:300], batch_size=1)
                else:
                    result[m] = load(servers[m][1], texts, args.clients, args.seconds)
            rounds.append(result)
            log(
                f"round {r + 1}: "
                + ", ".join(f"{m} {result[m]['texts_per_s']:.0f}/s" for m in methods)
                + f"; server/st {result['server']['texts_per_s'] / result['st']['texts_per_s']:.2f}"
                + f", server/unbatched {result['server']['texts_per_s'] / result['unbatched']['texts_per_s']:.2f}"
                + f", st/st1 {result['st']['texts_per_s'] / result['st1']['texts_per_s']:.2f}"
            )
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()

    def med(m: str, key: str) -> float:
        return statistics.median(r[m][key] for r in rounds)

    vs_st = [r["server"]["texts_per_s"] / r["st"]["texts_per_s"] for r in rounds]
    vs_unbatched = [r["server"]["texts_per_s"] / r["unbatched"]["texts_per_s"] for r in rounds]
    # what batching itself gains in-process: the most any server can gain over one-request-one-encode
    ceiling = [r["st"]["texts_per_s"] / r["st1"]["texts_per_s"] for r in rounds]
    summary = {
        "sentences": source,
        "clients": args.clients,
        "seconds": args.seconds,
        "backend": backend,
        "rounds": rounds,
        "median_texts_per_s": {m: med(m, "texts_per_s") for m in methods},
        "median_p50_ms": {m: med(m, "p50_ms") for m in ("server", "unbatched")},
        "median_p99_ms": {m: med(m, "p99_ms") for m in ("server", "unbatched")},
        "server_vs_st": {"per_round": vs_st, "median": statistics.median(vs_st), "goal": 0.8},
        "server_vs_unbatched": {"per_round": vs_unbatched, "median": statistics.median(vs_unbatched), "goal": 4.0},
        "st_vs_st_batch1": {"per_round": ceiling, "median": statistics.median(ceiling)},
    }
    if args.json:
        print(json.dumps(summary))
        return
    t = summary["median_texts_per_s"]
    print(f"servers' backend: {backend}")
    print(f"in-process ST encode (batch 64): {t['st']:.0f} texts/s; batch 1: {t['st1']:.0f} texts/s")
    for m in ("server", "unbatched"):
        print(
            f"simtool serve {'' if m == 'server' else '--no-batching '}: {t[m]:.0f} texts/s, "
            f"p50 {summary['median_p50_ms'][m]:.1f} ms, p99 {summary['median_p99_ms'][m]:.1f} ms"
        )
    print(
        f"server / ST: median {summary['server_vs_st']['median']:.2f} (goal >= 0.8), per round "
        + ", ".join(f"{x:.2f}" for x in vs_st)
    )
    print(
        f"server / unbatched: median {summary['server_vs_unbatched']['median']:.2f} (goal >= 4), per round "
        + ", ".join(f"{x:.2f}" for x in vs_unbatched)
    )
    print(
        f"in-process batch 64 / batch 1 (batching's own gain, the bound on server / unbatched): median "
        f"{summary['st_vs_st_batch1']['median']:.2f}, per round " + ", ".join(f"{x:.2f}" for x in ceiling)
    )


if __name__ == "__main__":
    main()
