"""Benchmark simtool's encode path against plain ``SentenceTransformer.encode``.

Measured, in texts per second (median over ``--repeats`` runs, method order rotated every run;
the ratios are medians of the per-repeat ratios, whose runs are back to back):

* ``simtool``: what ``simtool encode CORPUS -o OUT.npy`` runs once the model is loaded:
  :func:`simtool.encoder.encode_file` streaming the corpus file with
  :func:`simtool.corpus.read_documents`, encoding it chunk by chunk (``encode_stream``) into an
  ``(n, d) float32`` .npy memmap and writing the ids, all atomically. Reading, parsing and writing are
  included. Should ``encode_file`` fail, the same work is done with ``encode_stream`` directly and the
  failure is reported (``simtool_path``).
* ``st``: ``model.encode(texts, batch_size=B)`` on the same model and the same texts held in memory,
  with the same batch size B (``--batch-size``, default 64 as simtool).
* ``st_default``: ``model.encode(texts)`` with sentence-transformers' default batch size (32).

Texts: the first ``--n`` (default 5000) captions of ``<shared data>/unlabeled/*.txt.gz`` when present,
else the bundled sample corpus ``simtool/data/python_reference.jsonl`` (title + text, as simtool
encodes it). Model: ``--model`` (default all-MiniLM-L6-v2 through ``simtool.encoder.load_encoder``).
The goal is simtool / st >= 1.0.

Run (from the repo root)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_encode.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_encode.py --n 2000 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import rotated

from simtool.corpus import Document, read_documents
from simtool.encoder import embedding_dim, encode_file, encode_stream, load_encoder
from simtool.protocols import encoder_info

BUNDLED = Path(__file__).resolve().parents[1] / "simtool" / "data" / "python_reference.jsonl"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shared_data_dir() -> Path:
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def load_corpus(data_dir: Path, n: int, workdir: Path) -> tuple[Path, list[Document], str]:
    """A corpus file for simtool to read, its documents, and a label. Captions are cut to ``n`` lines."""
    files = sorted((data_dir / "unlabeled").glob("*.txt.gz"))
    if not files:
        docs = list(read_documents(BUNDLED))
        return BUNDLED, docs, f"bundled sample corpus {BUNDLED.name} ({len(docs)} documents)"
    docs = []
    for f in files:
        for doc in read_documents(f):
            docs.append(doc)
            if len(docs) == n:
                break
        if len(docs) == n:
            break
    corpus = workdir / "captions.txt"
    corpus.write_text("".join(d.text.replace("\n", " ") + "\n" for d in docs), encoding="utf-8")
    docs = list(read_documents(corpus))  # what simtool will see (ids = line numbers)
    return corpus, docs, f"first {len(docs)} captions of {', '.join(f.name for f in files)}"


def simtool_encode_stream(corpus: Path, n: int, output: Path, model: Any, batch_size: int) -> None:
    """``encode_file``'s work done with ``encode_stream`` directly: .npy memmap and ids file."""
    ids: list[str] = []
    vectors = np.lib.format.open_memmap(output, mode="w+", dtype=np.float32, shape=(n, embedding_dim(model)))
    encode_stream(
        model,
        read_documents(corpus),
        vectors,
        batch_size=batch_size,
        on_chunk=lambda chunk, _: ids.extend(d.id for d in chunk),
    )
    vectors.flush()
    del vectors
    output.with_suffix(".ids.json").write_text(json.dumps(ids))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000, help="number of captions (default 5000)")
    p.add_argument("--repeats", type=int, default=5, help="runs per method; medians reported (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size for simtool and st (default 64)")
    p.add_argument("--model", default=None, help="model name or path (default all-MiniLM-L6-v2)")
    p.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    p.add_argument("--data-dir", type=Path, default=shared_data_dir(), help="shared data (default ../shared/data)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--n, --repeats and --batch-size must be positive")

    model = load_encoder(args.model, device=args.device)
    with tempfile.TemporaryDirectory(prefix="simtool-bench-encode-") as tmp:
        workdir = Path(tmp)
        corpus, docs, label = load_corpus(args.data_dir, args.n, workdir)
        texts = [d.encoded_text for d in docs]
        n = len(texts)
        output = workdir / "out.npy"
        simtool_path = "encode_file"
        encode_file_error = None

        def run_simtool() -> None:
            nonlocal simtool_path, encode_file_error
            if simtool_path == "encode_file":
                try:
                    encode_file(
                        lambda: read_documents(corpus), n, output, model, batch_size=args.batch_size, progress=False
                    )
                    return
                except Exception as e:  # a library bug must not stop the benchmark; it is reported
                    encode_file_error = f"{type(e).__name__}: {e}"
                    simtool_path = "encode_stream (encode_file failed)"
                    log(f"warning: encode_file failed ({encode_file_error}); timing encode_stream instead")
            simtool_encode_stream(corpus, n, output, model, args.batch_size)

        st_out: dict[str, np.ndarray] = {}

        def run_st() -> None:
            st_out["st"] = model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

        def run_st_default() -> None:
            model.encode(texts, convert_to_numpy=True)

        methods: dict[str, Callable[[], None]] = {"simtool": run_simtool, "st": run_st, "st_default": run_st_default}
        # warm-up (first calls pay one-off costs) and the simtool path decision
        model.encode(texts[:256], batch_size=args.batch_size)
        run_simtool()
        runs: dict[str, list[float]] = {m: [] for m in methods}
        names = list(methods)
        for r in range(args.repeats):
            order = rotated(names, r)
            for name in order:
                started = time.perf_counter()
                methods[name]()
                runs[name].append(n / (time.perf_counter() - started))
                log(f"  run {r + 1}/{args.repeats} {name}: {runs[name][-1]:.0f} texts/s")
        simtool_vectors = np.load(output)
        max_abs_diff = float(np.abs(simtool_vectors - st_out["st"]).max())

    med = {m: statistics.median(v) for m, v in runs.items()}
    # Paired: each repeat's runs are back to back, so their ratio cancels most of the machine's load drift.
    paired = {m: statistics.median(a / b for a, b in zip(runs["simtool"], runs[m], strict=True)) for m in runs}
    report = {
        "benchmark": "encode",
        "texts": label,
        "n": n,
        "model": encoder_info(model).source,
        "device": str(model.device),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "simtool_path": simtool_path,
        "encode_file_error": encode_file_error,
        "texts_per_second": {m: round(v, 1) for m, v in med.items()},
        "runs_texts_per_second": {m: [round(x, 1) for x in v] for m, v in runs.items()},
        "ratio_simtool_over_st": round(paired["st"], 3),
        "ratio_simtool_over_st_default": round(paired["st_default"], 3),
        "ratio_of_medians_simtool_over_st": round(med["simtool"] / med["st"], 3),
        "max_abs_diff_simtool_vs_st": max_abs_diff,
        "goal_met": paired["st"] >= 1.0,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"texts: {label}; model {report['model']} on {report['device']}, {report['torch_threads']} torch threads")
    print(f"{'method':<44} {'texts/s (median)':>16}  runs")
    rows = [
        ("simtool", f"simtool {simtool_path} (batch {args.batch_size})"),
        ("st", f"SentenceTransformer.encode (batch {args.batch_size})"),
        ("st_default", "SentenceTransformer.encode (default batch 32)"),
    ]
    for key, title in rows:
        print(f"{title:<44} {med[key]:>16.1f}  {', '.join(f'{x:.0f}' for x in runs[key])}")
    goal = "met" if report["goal_met"] else "NOT met"
    st_ratio = report["ratio_simtool_over_st"]
    print(f"ratio simtool / st (median of per-repeat ratios): {st_ratio:.3f} (goal >= 1.0: {goal})")
    print(f"ratio simtool / st_default (median of per-repeat ratios): {report['ratio_simtool_over_st_default']:.3f}")
    print(f"ratio of medians simtool / st: {report['ratio_of_medians_simtool_over_st']:.3f}")
    print(f"max |simtool - st| over all vector entries: {max_abs_diff:.2e}")
    if encode_file_error:
        print(f"NOTE: simtool.encoder.encode_file failed: {encode_file_error}")


if __name__ == "__main__":
    main()
