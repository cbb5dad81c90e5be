"""Benchmark vector search: FAISS index types, simtool's search overhead, and torch exact search.

For each base size n (``--sizes``, default 100000,1000000) with d = 384 (all-MiniLM-L6-v2):

* data: the 141,995 Multi30k captions in ``<shared data>/unlabeled/*.txt.gz`` encoded with the
  default model through simtool's own encode path (cached as .npy under ``--cache-dir``, default
  ``~/.cache/simtool-bench``). ``--queries`` of them (default 1000) are held out as queries; the rest
  form the base. Sizes above the real count are filled with *synthetic* vectors drawn from a Gaussian
  with the real base's mean and covariance, L2-normalised (labelled so in the output). Without the
  shared data everything is synthetic (isotropic Gaussian, normalised), also labelled so.
* indexes (inner product): ``Flat`` (exact, the reference), ``HNSW32,Flat`` (efSearch sweep, ``--ef``),
  ``IVF{nlist},Flat`` with nlist = 4·√n rounded to a power of two (nprobe sweep, ``--nprobe``) and
  whatever :func:`simtool.vector_index.choose_factory` picks for ``--factory auto``. All are built
  with simtool's :func:`~simtool.vector_index.fill_index`.
* per index/setting: build time (s), QPS at batch 1 and batch ``--batch`` (1000), recall@10 against
  exact Flat search, memory = ``len(faiss.serialize_index(index))`` bytes.
* overhead: simtool's :class:`~simtool.vector_index.FaissSearcher` ``.search`` vs the index's own
  ``index.search`` on the same index and queries, at batch 1000 (and batch 1), order alternated per
  repeat; ratio of medians (goal <= 1.05).
* torch: :class:`~simtool.vector_index.TorchExactSearcher` on CPU vs faiss ``Flat``, same run.
* goal: an ANN setting with recall@10 >= 0.95 at >= 10x the Flat QPS (batch 1000 and batch 1, reported
  separately) at the largest size.

Every timing is the median over ``--repeats`` runs; ratios compare against the competitor measured in
the same run. FAISS uses its default OpenMP thread count.

Run (from the repo root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_search.py                      # 100k and 1M
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_search.py --sizes 100000 --json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_search.py --sizes 1000000 --skip hnsw
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss
import numpy as np
import torch

from simtool.protocols import encoder_info
from simtool.vector_index import (
    FaissSearcher,
    TorchExactSearcher,
    apply_search_params,
    choose_factory,
    default_search_params,
    fill_index,
    new_faiss_index,
)

K = 10
DIM_FALLBACK = 384
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shared_data_dir() -> Path:
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- data


def caption_embeddings(data_dir: Path, cache_dir: Path, batch_size: int) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Real caption embeddings ``(n, 384) float32``, encoded once with simtool's encode path and cached."""
    files = sorted((data_dir / "unlabeled").glob("*.txt.gz"))
    if not files:
        return None
    from simtool.corpus import read_documents, scan_corpus
    from simtool.encoder import embedding_dim, encode_stream, load_encoder, model_fingerprint, progress_bar

    model = load_encoder(device="cpu")
    key = model_fingerprint(model)
    cache_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for f in files:
        out = cache_dir / f"{f.name.split('.')[0]}-{key}.npy"
        if not out.exists():
            n = scan_corpus(f)
            log(f"encoding {n} texts from {f} into {out} (once; cached) ...")
            started = time.perf_counter()
            # encode_stream is the core of `simtool encode` (encode_file); written to a temp file, then renamed.
            vectors = np.empty((n, embedding_dim(model)), dtype=np.float32)
            with progress_bar(n, "encode", True) as bar:
                encode_stream(model, read_documents(f), vectors, batch_size=batch_size, bar=bar)
            tmp = out.with_name(out.name + ".tmp.npy")
            np.save(tmp, vectors)
            os.replace(tmp, out)
            log(f"  {time.perf_counter() - started:.0f}s ({n / (time.perf_counter() - started):.0f} texts/s)")
        parts.append(np.load(out))
    vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    info = {
        "source": [str(f) for f in files],
        "model": encoder_info(model).source,
        "fingerprint": key,
        "n": len(vectors),
    }
    return vectors, info


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def gaussian_fill(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``(n, d) float32`` drawn from N(mean, cov) of ``real`` (float64 fit), L2-normalised."""
    mean = real.mean(axis=0, dtype=np.float64)
    centred = real.astype(np.float64) - mean
    cov = centred.T @ centred / (len(real) - 1)
    chol = np.linalg.cholesky(cov + 1e-8 * np.eye(len(cov)))
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        z = rng.standard_normal((min(100_000, n - start), real.shape[1]))
        out[start : start + len(z)] = normalise(z @ chol.T + mean)
    return out


class Dataset:
    """Held-out queries and a pool of base vectors; ``base(n)`` pads with synthetic vectors when needed."""

    def __init__(self, args: argparse.Namespace) -> None:
        loaded = None if args.synthetic else caption_embeddings(args.data_dir, args.cache_dir, args.encode_batch_size)
        rng = np.random.default_rng(args.seed)
        if loaded is not None:
            real, self.info = loaded
            real = normalise(real)  # the model already normalises; guard for other models
            perm = rng.permutation(len(real))
            self.queries = np.ascontiguousarray(real[perm[: args.queries]])
            self.real_base = np.ascontiguousarray(real[perm[args.queries :]])
            self.info["kind"] = "real"
        else:
            self.info = {"kind": "synthetic (isotropic Gaussian, L2-normalised)", "n": 0}
            self.queries = normalise(rng.standard_normal((args.queries, DIM_FALLBACK))).astype(np.float32)
            self.real_base = np.zeros((0, DIM_FALLBACK), dtype=np.float32)
        self.seed = args.seed

    @property
    def dim(self) -> int:
        return self.queries.shape[1]

    def base(self, n: int) -> tuple[np.ndarray, str, int]:
        """``(vectors (n, d) float32, label, number of real rows)``; real rows come first."""
        n_real = min(n, len(self.real_base))
        if n_real == n:
            return np.ascontiguousarray(self.real_base[:n]), "real caption embeddings", n
        out = np.empty((n, self.dim), dtype=np.float32)
        out[:n_real] = self.real_base[:n_real]
        if n_real:
            out[n_real:] = gaussian_fill(self.real_base, n - n_real, self.seed + 1)
            label = f"{n_real} real + {n - n_real} synthetic (Gaussian fitted to real embeddings)"
        else:
            rng = np.random.default_rng(self.seed + 1)
            for start in range(0, n, 100_000):
                m = min(100_000, n - start)
                out[start : start + m] = normalise(rng.standard_normal((m, self.dim)))
            label = "synthetic (isotropic Gaussian, L2-normalised)"
        return out, label, n_real


# ---------------------------------------------------------------- timing


def qps_batch(search: SearchFn, queries: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    """Queries per second searching ``queries`` in batches of ``batch``; also the rows found."""
    rows = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        rows.append(search(queries[start : start + batch], K)[1])
    return len(queries) / (time.perf_counter() - started), np.concatenate(rows)


def qps_single(search: SearchFn, queries: np.ndarray, max_queries: int, budget_s: float) -> float:
    """Queries per second one query at a time: up to ``max_queries`` or ``budget_s`` seconds (>= 3 queries)."""
    done = 0
    started = time.perf_counter()
    while done < min(max_queries, len(queries)):
        search(queries[done : done + 1], K)
        done += 1
        if done >= 3 and time.perf_counter() - started > budget_s:
            break
    return done / (time.perf_counter() - started)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def index_bytes(index: Any) -> int:
    return len(faiss.serialize_index(index))


def build(factory: str, vectors: np.ndarray) -> tuple[Any, float]:
    index = new_faiss_index(factory, vectors.shape[1], "ip")
    done = [0]
    last = [time.perf_counter()]

    def progress(m: int) -> None:
        done[0] += m
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            log(f"    {factory}: added {done[0]}/{len(vectors)}")

    started = time.perf_counter()
    index = fill_index(index, vectors, gpu=False, on_progress=progress)
    return index, time.perf_counter() - started


def measure(
    name: str, search: SearchFn, data: Dataset, truth: np.ndarray, args: argparse.Namespace, **extra: Any
) -> dict[str, Any]:
    b1, bn, recall = [], [], None
    for _ in range(args.repeats):
        qps, rows = qps_batch(search, data.queries, args.batch)
        bn.append(qps)
        recall = recall_at_k(rows, truth) if truth is not None else 1.0
        b1.append(qps_single(search, data.queries, args.batch1_queries, args.batch1_budget))
    row = {
        "config": name,
        **extra,
        "recall_at_10": round(recall, 4),
        "qps_batch1": round(statistics.median(b1), 1),
        f"qps_batch{args.batch}": round(statistics.median(bn), 1),
        "qps_batch1_runs": [round(x, 1) for x in b1],
        f"qps_batch{args.batch}_runs": [round(x, 1) for x in bn],
    }
    log(
        f"    {name}: recall@10 {row['recall_at_10']:.4f}  QPS b1 {row['qps_batch1']:.0f}  "
        f"b{args.batch} {row[f'qps_batch{args.batch}']:.0f}"
    )
    return row


def overhead(index: Any, params: dict[str, int], data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """simtool FaissSearcher.search vs index.search on the same index, order alternated per repeat."""
    searcher = FaissSearcher(index, params, gpu=False)
    repeats = max(args.repeats, 5)
    out: dict[str, Any] = {"params": params, "repeats": repeats}
    for label, batch in ((f"batch{args.batch}", args.batch), ("batch1", 1)):
        queries = data.queries if batch > 1 else data.queries[: args.batch1_queries]
        times: dict[str, list[float]] = {"faiss": [], "simtool": []}
        fns = {"faiss": index.search, "simtool": searcher.search}
        for r in range(repeats):
            for who in ("faiss", "simtool") if r % 2 == 0 else ("simtool", "faiss"):
                times[who].append(qps_batch(fns[who], queries, batch)[0])
        faiss_qps, simtool_qps = statistics.median(times["faiss"]), statistics.median(times["simtool"])
        out[label] = {
            "faiss_qps": round(faiss_qps, 1),
            "simtool_qps": round(simtool_qps, 1),
            "time_ratio_simtool_over_faiss": round(faiss_qps / simtool_qps, 4),
        }
    return out


# ---------------------------------------------------------------- per size


def run_size(n: int, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    log(f"== n = {n}")
    base, label, n_real = data.base(n)
    result: dict[str, Any] = {"n": n, "dim": data.dim, "base": label, "n_real": n_real, "rows": []}
    rows = result["rows"]
    bn = f"qps_batch{args.batch}"

    # Flat: the exact reference.
    flat, secs = build("Flat", base)
    _, truth = flat.search(data.queries, K)
    flat_row = measure("Flat", flat.search, data, truth, args, build_s=round(secs, 2), bytes=index_bytes(flat))
    rows.append(flat_row)
    if choose_factory(n, data.dim) == "Flat":
        result["overhead"] = overhead(flat, {}, data, args)
    if n_real < n:
        result["share_of_true_neighbours_synthetic"] = round(float(np.mean(truth >= n_real)), 4)
    del flat

    if "torch" not in args.skip:
        torch_searcher = TorchExactSearcher(base, "ip", "cpu")
        torch_row = measure("TorchExact (cpu)", torch_searcher.search, data, truth, args, build_s=0.0, bytes=None)
        rows.append(torch_row)
        result["torch_vs_flat"] = {
            f"qps_ratio_batch{args.batch}": round(torch_row[bn] / flat_row[bn], 3),
            "qps_ratio_batch1": round(torch_row["qps_batch1"] / flat_row["qps_batch1"], 3),
        }
        del torch_searcher

    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    ivf_factory = f"IVF{nlist},Flat"
    auto_factory = choose_factory(n, data.dim)
    auto_params = default_search_params(auto_factory)
    result["auto"] = {"factory": auto_factory, "params": auto_params}

    def sweep(factory: str, key: str, values: list[int], also: dict[str, int] | None) -> Any:
        index, secs = build(factory, base)
        size = index_bytes(index)
        settings = [{key: v} for v in values]
        if also is not None and also not in settings:
            settings.append(also)
        for params in settings:
            apply_search_params(index, params)
            name = f"{factory} " + " ".join(f"{k}={v}" for k, v in params.items())
            if params == also:
                name += " (auto)"
            rows.append(measure(name, index.search, data, truth, args, build_s=round(secs, 2), bytes=size))
        return index

    plan = []  # IVF first: it builds in minutes, HNSW32 at 1M can take an hour on 2 cores
    if "ivf" not in args.skip:
        plan.append((ivf_factory, "nprobe", args.nprobe))
    if "hnsw" not in args.skip:
        plan.append(("HNSW32,Flat", "efSearch", args.ef))
    if auto_factory != "Flat" and auto_factory not in [f for f, _, _ in plan]:
        plan.append((auto_factory, "", []))  # only its default setting
    for factory, key, values in plan:
        also = auto_params if factory == auto_factory else None
        index = sweep(factory, key, values, also)
        if also is not None:
            result["overhead"] = overhead(index, auto_params, data, args)
        del index
    goal: dict[str, Any] = {}
    for key in (bn, "qps_batch1"):
        meeting = [
            r
            for r in rows
            if r["config"] not in ("Flat", "TorchExact (cpu)")
            and r["recall_at_10"] >= 0.95
            and r[key] >= 10 * flat_row[key]
        ]
        best = max(meeting, key=lambda r: r[key], default=None)
        goal[key] = {
            "met": best is not None,
            "configs": [r["config"] for r in meeting],
            "best": None if best is None else best["config"],
            "best_speedup": None if best is None else round(best[key] / flat_row[key], 1),
        }
    result["goal_recall095_10x_flat"] = goal
    return result


# ---------------------------------------------------------------- output


def print_size(res: dict[str, Any], batch: int) -> None:
    bn = f"qps_batch{batch}"
    flat = res["rows"][0]
    print(f"\nn = {res['n']:,}  d = {res['dim']}  base: {res['base']}")
    if "share_of_true_neighbours_synthetic" in res:
        print(f"share of exact top-10 neighbours that are synthetic: {res['share_of_true_neighbours_synthetic']:.3f}")
    header = f"{'config':<36} {'build s':>8} {'MB':>8} {'recall@10':>9} {'QPS b1':>9} {'QPS b' + str(batch):>10}"
    print(header + f" {'x Flat':>7}")
    print("-" * (len(header) + 8))
    for r in res["rows"]:
        mb = "-" if r["bytes"] is None else f"{r['bytes'] / 2**20:.0f}"
        print(
            f"{r['config']:<36} {r['build_s']:>8.1f} {mb:>8} {r['recall_at_10']:>9.4f} "
            f"{r['qps_batch1']:>9.1f} {r[bn]:>10.1f} {r[bn] / flat[bn]:>7.1f}"
        )
    print(f"auto: {res['auto']['factory']} {res['auto']['params']}")
    if "torch_vs_flat" in res:
        t = res["torch_vs_flat"]
        print(
            f"TorchExactSearcher(cpu) / faiss Flat QPS: batch {batch} {t[f'qps_ratio_batch{batch}']:.2f}x, "
            f"batch 1 {t['qps_ratio_batch1']:.2f}x"
        )
    o = res["overhead"]
    for label in (f"batch{batch}", "batch1"):
        v = o[label]
        print(
            f"overhead {label} ({o['params']}): FaissSearcher.search {v['simtool_qps']:.0f} QPS vs index.search "
            f"{v['faiss_qps']:.0f} QPS -> time ratio {v['time_ratio_simtool_over_faiss']:.3f} (goal <= 1.05)"
        )
    for key, g in res["goal_recall095_10x_flat"].items():
        status = f"MET by {g['best']} ({g['best_speedup']}x Flat)" if g["met"] else "NOT met"
        print(f"goal recall@10 >= 0.95 at >= 10x Flat QPS ({key}): {status}")


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int_list, default=[100_000, 1_000_000], help="base sizes (default 100000,1000000)")
    p.add_argument("--queries", type=int, default=1000, help="held-out query vectors (default 1000)")
    p.add_argument("--batch", type=int, default=1000, help="large batch size (default 1000)")
    p.add_argument("--batch1-queries", type=int, default=200, help="queries timed one by one (default 200)")
    p.add_argument("--batch1-budget", type=float, default=5.0, help="seconds per batch-1 run at most (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; medians reported (default 3)")
    p.add_argument("--ef", type=int_list, default=[64, 128], help="HNSW efSearch values (default 64,128)")
    p.add_argument("--nprobe", type=int_list, default=[16, 32, 64, 128], help="IVF nprobe values")
    p.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(), help="any of hnsw,ivf,torch")
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/simtool-bench").expanduser())
    p.add_argument("--data-dir", type=Path, default=shared_data_dir(), help="shared data (default ../shared/data)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic vectors even if real data exists")
    p.add_argument("--encode-batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    if args.batch < 2 or args.repeats < 1 or args.queries < 1:
        p.error("--batch must be >= 2, --repeats and --queries >= 1")

    data = Dataset(args)
    report: dict[str, Any] = {
        "benchmark": "search",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "data": data.info,
        "queries": len(data.queries),
        "k": K,
        "repeats": args.repeats,
        "results": [],
    }
    for n in args.sizes:
        res = run_size(n, data, args)
        report["results"].append(res)
        if not args.json:
            print_size(res, args.batch)
            sys.stdout.flush()
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
