"""Benchmark the live index: add, delete, open-and-search, segment count and recall after deletes.

Data: the 141,995 Multi30k captions (``<shared data>/unlabeled``), encoded by a *tiny model built
here* (a 1-layer, 32-dim random BERT with mean pooling) so that encoding does not dominate. Sizes
above the real count repeat the captions with a numeric suffix ``#k`` (their vectors are the
caption's vector plus Gaussian jitter of 0.05, renormalised, so each document is distinct); that
is said in the output. For each n (``--sizes``):

* ``add_100_s``: wall time of ``Index.append`` of 100 pre-encoded documents (so encode time is
  excluded), median of ``--rounds`` adds, and the max (an add that triggers a tiered merge);
* ``delete_1000_s``: ``Index.delete`` of 1,000 live ids, median of rounds;
* ``search_process_s``: a new process that imports simtool, opens the index and answers one query,
  model load excluded (``Retriever.load(load_model=False)`` + ``search_vectors``); and the full
  ``simtool search`` command wall time beside it, model load included;
* ``qps``: batch-``--batch`` search QPS over 1, 4 and 16 segments and over the compacted index, and
  the time ratio against the compacted one (goal: 16 segments <= 1.5x);
* ``recall``: recall@10 of HNSW32 and IVF after 10% of documents are deleted, against exact search
  over the survivors, beside a fresh build of the survivors (goal: within 0.01), at n <= ``--recall-max``.

Competitor, measured in the same run: simtool's previous monolithic layout, where an add rewrote and
re-hashed the whole directory; its cost is reproduced as copy + sha256 of the index's files.

Run::

    HF_HUB_OFFLINE=1 python benchmarks/bench_index.py --sizes 20000,100000 --json
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from simtool.corpus import Document
from simtool.index import EncodedPart, Index, build_index
from simtool.manifest import sha256_file

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tiny_model(directory: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(_default_model_dir())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    raw = directory / "bert"
    BertModel(config).save_pretrained(raw)
    tok.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()], device="cpu")
    model.save(str(directory / "st"))
    return directory / "st"


def _default_model_dir() -> Path:
    from simtool.encoder import resolve_model_path

    return resolve_model_path(None)


def captions(data_dir: Path) -> list[str]:
    path = data_dir / "unlabeled" / "multi30k_en_captions_dedup_decontaminated.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def corpus(
    n: int, texts: list[str], vectors: np.ndarray, rng: np.random.Generator
) -> tuple[list[Document], np.ndarray]:
    reps = -(-n // len(texts))
    docs = [
        Document(id=str(i), text=texts[i % len(texts)] + (f" #{i // len(texts)}" if i >= len(texts) else ""))
        for i in range(n)
    ]
    out = np.tile(vectors, (reps, 1))[:n].copy()
    if n > len(texts):
        out[len(texts) :] += rng.normal(0, 0.05, out[len(texts) :].shape).astype(np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
    return docs, out


def make_index(path: Path, model: Any, docs: list[Document], vectors: np.ndarray, factory: str, segments: int) -> Index:
    """An index of ``docs`` in ``segments`` equal segments (no merges), from pre-encoded vectors."""
    bounds = np.linspace(0, len(docs), segments + 1).astype(int)
    first = bounds[1]
    build_index(
        [EncodedPart(docs[:first], vectors[:first])], path, model=model, factory=factory, gpu=False, progress=False
    )
    index = Index(path, auto_merge=False, gpu=False)
    for a, b in itertools.pairwise(bounds[1:]):
        index.append([EncodedPart(docs[a:b], vectors[a:b])])
    return index


def old_layout_add_cost(path: Path) -> float:
    """What an add cost before segments: copy every file of the index, then sha256 it twice (read + check)."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        for f in path.rglob("*"):
            if f.is_file() and "segments" in f.parts:
                dst = Path(tmp) / f.name
                shutil.copyfile(f, dst)
                sha256_file(dst)
                sha256_file(f)
    return time.perf_counter() - t


def search_process(path: Path) -> float:
    code = (
        "import time,sys; t=time.perf_counter();"
        "import numpy as np; from simtool.retriever import Retriever;"
        f"r=Retriever.load({str(path)!r}, load_model=False);"
        "q=np.ones((1, r.manifest.dim), np.float32); r.hits_for(*r.search_vectors(q, 10));"
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return float(out.stdout.strip())


def cli_search(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "simtool", "search", "a dog runs on the beach", "--index-dir", str(path), "--json"],
        capture_output=True,
        check=True,
        cwd=REPO,
    )
    return time.perf_counter() - t


def qps(path: Path, queries: np.ndarray, batch: int, rounds: int) -> float:
    from simtool.retriever import Retriever

    with Retriever.load(path, load_model=False) as r:
        r.search_vectors(queries[:10], 10)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for s in range(0, len(queries), batch):
                r.search_vectors(queries[s : s + batch], 10)
            times.append(time.perf_counter() - t)
    return len(queries) / statistics.median(times)


def recall_after_deletes(
    root: Path,
    model: Any,
    docs: list[Document],
    vectors: np.ndarray,
    queries: np.ndarray,
    factory: str,
    params: dict[str, int],
) -> dict[str, float]:
    from simtool.retriever import Retriever

    rng = np.random.default_rng(1)
    doomed = rng.choice(len(docs), size=len(docs) // 10, replace=False)
    alive = np.setdiff1d(np.arange(len(docs)), doomed)
    truth = np.argsort(-(queries @ vectors[alive].T), axis=1)[:, :10]
    truth_ids = [{docs[alive[j]].id for j in row} for row in truth]

    def recall(path: Path) -> float:
        with Retriever.load(path, load_model=False, search_params=params) as r:
            hits = r.hits_for(*r.search_vectors(queries, 10))
        return float(np.mean([len({h.id for h in hs} & t) / 10 for hs, t in zip(hits, truth_ids, strict=True)]))

    live = root / f"live-{factory}"
    index = make_index(live, model, docs, vectors, factory, 1)
    index.delete([docs[i].id for i in doomed])
    fresh = root / f"fresh-{factory}"
    make_index(fresh, model, [docs[i] for i in alive], vectors[alive], factory, 1)
    a, b = recall(live), recall(fresh)
    shutil.rmtree(live), shutil.rmtree(fresh)
    return {"after_deletes": round(a, 4), "fresh_build": round(b, 4), "gap": round(b - a, 4)}


def run_size(
    n: int, root: Path, model: Any, texts: list[str], base: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    docs, vectors = corpus(n, texts, base, rng)
    queries = vectors[rng.choice(n, size=args.queries, replace=False)] + rng.normal(0, 0.05, (args.queries, 32)).astype(
        np.float32
    )
    out: dict[str, Any] = {"n": n, "synthetic_repeats": n > len(texts), "factory": args.factory}
    path = root / f"idx-{n}"
    log(f"n={n}: building one {args.factory} segment")
    make_index(path, model, docs, vectors, args.factory, 1)
    index = Index(path, gpu=False)  # the default policy from here on
    out["bytes_on_disk"] = sum(f["bytes"] for f in index.manifest.files.values())
    adds, old = [], []
    for r in range(args.rounds):
        new = [Document(id=f"new-{r}-{i}", text=texts[i]) for i in range(100)]
        part = EncodedPart(new, base[:100] + 0.01)
        t = time.perf_counter()
        index.append([part])
        adds.append(time.perf_counter() - t)
        if r < 3:
            old.append(old_layout_add_cost(path))
    dels = []
    for r in range(args.rounds):
        ids = [str(i) for i in range(r * 1000, (r + 1) * 1000)]
        t = time.perf_counter()
        index.delete(ids)
        dels.append(time.perf_counter() - t)
    out["add_100_s"] = {
        "median": round(statistics.median(adds), 4),
        "max": round(max(adds), 4),
        "rounds": [round(a, 4) for a in adds],
    }
    out["old_layout_add_s"] = {"median": round(statistics.median(old), 3), "rounds": [round(a, 3) for a in old]}
    out["add_speedup_vs_old_layout"] = round(statistics.median(old) / statistics.median(adds), 1)
    out["delete_1000_s"] = {"median": round(statistics.median(dels), 4), "rounds": [round(d, 4) for d in dels]}
    out["search_process_s"] = {"median": round(statistics.median(search_process(path) for _ in range(3)), 3)}
    out["simtool_search_cli_s"] = round(cli_search(path), 3)
    out["segments_after_writes"] = len(index.manifest.segments)
    shutil.rmtree(path)
    # QPS: k equal segments against one compacted segment, same documents
    q = {}
    for k in (1, 4, 16):
        p = root / f"qps-{n}-{k}"
        make_index(p, model, docs, vectors, args.factory, k)
        q[k] = qps(p, queries, args.batch, args.rounds)
        shutil.rmtree(p)
    out["qps_batch"] = {str(k): round(v, 1) for k, v in q.items()}
    out["time_ratio_vs_compacted"] = {str(k): round(q[1] / v, 2) for k, v in q.items()}
    if n <= args.recall_max:
        nlist = 2 ** round(np.log2(4 * np.sqrt(n)))
        out["recall_at_10"] = {
            "HNSW32,Flat efSearch=64": recall_after_deletes(
                root, model, docs, vectors, queries, "HNSW32,Flat", {"efSearch": 64}
            ),
            f"IVF{nlist},Flat nprobe={max(8, nlist // 32)}": recall_after_deletes(
                root, model, docs, vectors, queries, f"IVF{nlist},Flat", {"nprobe": max(8, nlist // 32)}
            ),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="20000,100000", help="comma-separated n")
    p.add_argument("--factory", default="Flat")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--recall-max", type=int, default=100_000)
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "simtool-bench")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from simtool.encoder import encode_texts, load_encoder

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        root = Path(tmp)
        model = load_encoder(tiny_model(root / "model"), device="cpu")
        texts = captions(args.data_dir)
        t = time.perf_counter()
        cache = args.cache_dir / "tiny-captions.npy"
        if cache.exists():
            base = np.load(cache)
        else:
            log(f"encoding {len(texts)} captions with the tiny model (cached in {cache})")
            base = encode_texts(model, texts, batch_size=256)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, base)
        encode_s = time.perf_counter() - t
        results: dict[str, Any] = {"captions": len(texts), "encode_or_load_s": round(encode_s, 1), "sizes": []}
        for n in map(int, args.sizes.split(",")):
            res = run_size(n, root, model, texts, base, args)
            results["sizes"].append(res)
            log(json.dumps(res))
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
