"""The measured inputs of the 1B-document plan in ``docs/scaling.md``.

Prints, as JSON:

* ``encode``: the default model's CPU encode throughput on SciFact passages (``title + " " + text``,
  max 256 tokens as the model is configured), one process with ``--threads`` torch threads, texts/s
  over ``--n`` passages, median of ``--repeats`` runs;
* ``sqlite_bytes_per_doc``: the size of a segment's ``docs.sqlite`` divided by its rows, for an
  index of those passages (the text store the plan sizes);
* ``faiss_bytes_per_vector``: serialised index bytes per vector for ``Flat``, ``HNSW32``, ``PQ``
  and ``IVF-PQ`` factories at 384 and 128 dims, on ``--vectors`` random vectors (graph and code
  sizes do not depend on the values; the IVF centroids are amortised over the rows).

Run: ``SIMTOOL_SHARED_DATA=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scaling_figures.py``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FACTORIES = {384: ["Flat", "HNSW32", "PQ48", "IVF1024,PQ48"], 128: ["Flat", "HNSW32", "PQ16", "IVF1024,PQ16"]}


def data_dir(arg: str | None) -> Path:
    path = Path(arg or os.environ.get("SIMTOOL_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared/data")
    if not (path / "beir/scifact/corpus.jsonl").exists():
        sys.exit(f"scaling_figures: no SciFact corpus under {path} (pass --data-dir)")
    return path


def encode_rate(texts: list[str], threads: int, repeats: int) -> dict[str, float]:
    import torch

    from simtool.encoder import load_encoder

    torch.set_num_threads(threads)
    model = load_encoder(None, device="cpu")
    model.encode(texts[:64], batch_size=64)  # warm-up: first-call allocations
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(texts, batch_size=64)
        rates.append(len(texts) / (time.perf_counter() - started))
    return {"texts_per_second_median": round(statistics.median(rates), 1), "rounds": [round(r, 1) for r in rates]}


def sqlite_bytes_per_doc(corpus: Path, n: int) -> float:
    from simtool.corpus import read_documents
    from simtool.encoder import load_encoder
    from simtool.index import EncodedPart, build_index
    from simtool.segments import SEGMENTS_DIR

    docs = [d for _, d in zip(range(n), read_documents(corpus), strict=False)]
    model = load_encoder(None, device="cpu")
    vectors = np.zeros((len(docs), 384), dtype=np.float32)  # the text store's size does not depend on them
    vectors[:, 0] = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        build_index([EncodedPart(docs, vectors)], Path(tmp) / "idx", model=model, factory="Flat", progress=False)
        (db,) = (Path(tmp) / "idx" / SEGMENTS_DIR).glob("*/docs.sqlite")
        return round(db.stat().st_size / len(docs), 1)


def faiss_bytes(n: int) -> dict[str, dict[str, float]]:
    import faiss

    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for dim, factories in FACTORIES.items():
        x = rng.standard_normal((n, dim)).astype(np.float32)
        faiss.normalize_L2(x)
        out[str(dim)] = {}
        for factory in factories:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                index.train(x[: min(n, 50_000)])
            index.add(x)
            out[str(dim)][factory] = round(faiss.serialize_index(index).size / n, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--n", type=int, default=512, help="passages encoded per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the per-core figure)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=100_000)
    args = parser.parse_args()
    corpus = data_dir(args.data_dir) / "beir/scifact/corpus.jsonl"
    from simtool.corpus import read_documents

    texts = [(f"{d.title} {d.text}").strip() for _, d in zip(range(args.n), read_documents(corpus), strict=False)]
    result = {
        "encode": {"threads": args.threads, "passages": len(texts), **encode_rate(texts, args.threads, args.repeats)},
        "sqlite_bytes_per_doc": sqlite_bytes_per_doc(corpus, 5183),
        "faiss_bytes_per_vector": faiss_bytes(args.vectors),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
