"""Benchmark ``simtool serve``'s ``/v1/embeddings`` under concurrent single-sentence clients.

Three ways to embed the same sentences, interleaved in each round (order rotated every round):

* ``server``: ``simtool serve`` with dynamic batching; ``--clients`` threads each POST one sentence at a time
  for ``--seconds`` seconds (bounded: every loop stops by itself);
* ``unbatched``: the same server with ``--no-batching`` (one request, one encode), same clients;
* ``st``: in-process ``SentenceTransformer.encode(texts, batch_size=64)`` on the same sentences, same model.

Prints texts/s, p50/p99 latency of the servers, and per-round ratios with their medians. Goals (issue 11):
server ≥ 0.8× st, and server ≥ 4× unbatched. Both servers are separate processes started once; the clients share
the machine with them, as clients on localhost do.

Sentences: STS-B test (``<shared data>/stsb/sbert_format/stsbenchmark.tsv.gz``) when present, else the bundled
sample corpus. Run (from the repo root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py [--clients 32 --seconds 10 --rounds 3 --json]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

BUNDLED = Path(__file__).resolve().parents[1] / "simtool" / "data" / "python_reference.jsonl"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sentences(n: int) -> tuple[list[str], str]:
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = shared / "stsb" / "sbert_format" / "stsbenchmark.tsv.gz"
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


def start_server(model: str | None, batching: bool, max_wait_ms: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "simtool", "serve", "--port", str(port), "--max-wait-ms", str(max_wait_ms)]
    cmd += ["--model", model] if model else []
    cmd += [] if batching else ["--no-batching"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def load(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads, each posting one sentence per request until ``seconds`` have passed."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = time.perf_counter()
    stop_at = start + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            j = i
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = http.post("/v1/embeddings", json={"input": texts[j % len(texts)], "model": "bench"})
                if r.status_code == 200:
                    latencies[i].append(time.perf_counter() - t0)
                else:
                    errors[i] += 1
                j += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(x for per in latencies for x in per)
    return {
        "texts_per_s": len(lat) / wall,
        "p50_ms": 1000 * lat[len(lat) // 2] if lat else float("nan"),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "requests": len(lat),
        "errors": sum(errors),
    }


def in_process(model: Any, texts: list[str]) -> dict[str, float]:
    t0 = time.perf_counter()
    model.encode(texts, batch_size=64, show_progress_bar=False)
    return {"texts_per_s": len(texts) / (time.perf_counter() - t0)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model path (default: all-MiniLM-L6-v2)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each server load run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=2000, help="sentences")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="the batching server's --max-wait-ms")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from simtool.encoder import load_encoder

    texts, source = sentences(args.n)
    log(f"{len(texts)} sentences from {source}; {args.clients} clients, {args.seconds:g} s per run")
    model = load_encoder(args.model, device="cpu")
    servers = {
        "server": start_server(args.model, True, args.max_wait_ms),
        "unbatched": start_server(args.model, False, args.max_wait_ms),
    }
    try:
        for url in (u for _, u in servers.values()):  # warm-up: first requests pay lazy initialisation
            load(url, texts, 4, 1.0)
        in_process(model, texts[:256])
        rounds: list[dict[str, dict[str, float]]] = []
        methods = ["st", "server", "unbatched"]
        for r in range(args.rounds):
            order = methods[r % 3 :] + methods[: r % 3]
            result = {}
            for m in order:
                result[m] = (
                    in_process(model, texts) if m == "st" else load(servers[m][1], texts, args.clients, args.seconds)
                )
            rounds.append(result)
            log(
                f"round {r + 1}: "
                + ", ".join(f"{m} {result[m]['texts_per_s']:.0f}/s" for m in methods)
                + f"; server/st {result['server']['texts_per_s'] / result['st']['texts_per_s']:.2f}"
                + f", server/unbatched {result['server']['texts_per_s'] / result['unbatched']['texts_per_s']:.2f}"
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
    summary = {
        "sentences": source,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": rounds,
        "median_texts_per_s": {m: med(m, "texts_per_s") for m in ("st", "server", "unbatched")},
        "median_p50_ms": {m: med(m, "p50_ms") for m in ("server", "unbatched")},
        "median_p99_ms": {m: med(m, "p99_ms") for m in ("server", "unbatched")},
        "server_vs_st": {"per_round": vs_st, "median": statistics.median(vs_st), "goal": 0.8},
        "server_vs_unbatched": {"per_round": vs_unbatched, "median": statistics.median(vs_unbatched), "goal": 4.0},
    }
    if args.json:
        print(json.dumps(summary))
        return
    t = summary["median_texts_per_s"]
    print(f"in-process ST encode (batch 64): {t['st']:.0f} texts/s")
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


if __name__ == "__main__":
    main()
