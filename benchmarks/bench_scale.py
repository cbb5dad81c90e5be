"""Benchmark ``simtool index build --ray`` against the single-process build, and shard assembly against a direct build.

Part 1, the Ray build. The same real sentences (Multi30k captions, ``<shared data>/unlabeled``, first ``--docs``)
become an index with the default model three ways in each round, order rotated every round:

* ``single``: :func:`simtool.index.build_index` in this process (torch's threads on every core);
* ``ray1`` / ``ray2``: :func:`simtool.distributed.ray_index.build_index_ray` with 1 / 2 encoder actors on a local
  cluster started once (``ray.init(num_cpus=<cores>)``).

Every figure is end to end, model loading included, as a user runs ``simtool index build``. The issue's goal:
``ray1`` ≤ 1.15× the single-process time (Ray's overhead is small), and ``ray2`` faster than ``ray1``.

Part 2, assembly. With the vectors of part 1 already encoded (no encoding is timed), an ``--factory`` IVF-PQ index:

* ``assemble``: the vectors as 8 segments filled from one training (what 8 Ray shards commit), then
  ``Index.compact()``, which merges their inverted lists on disk;
* ``direct``: the same vectors built as one segment (train + add);
* ``retrain``: ``Index.compact(retrain=True)`` of the 8 segments, re-indexing from the raw vectors.

Prints seconds, medians, per-round ratios. Run::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_scale.py [--docs 20000 --rounds 3 --json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import print_ratio_summary, ratio_summary, rotated_rounds

from tests.conftest import shared_data_dir


def _corpus(n: int, directory: Path) -> Path:
    data = shared_data_dir()
    if data is None:
        sys.exit("bench_scale: needs ../shared/data (unlabeled/multi30k_en_captions_dedup_decontaminated.txt.gz)")
    with gzip.open(data / "unlabeled" / "multi30k_en_captions_dedup_decontaminated.txt.gz", "rt") as f:
        lines = [line.strip() for line, _ in zip(f, range(n), strict=False) if line.strip()]
    path = directory / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(lines)))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--factory", default="IVF256,PQ32", help="the IVF index assembled in part 2")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--skip-ray", action="store_true", help="part 2 only")
    parser.add_argument("--skip-assembly", action="store_true", help="part 1 only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from simtool.distributed import RayOptions
    from simtool.distributed.ray_index import build_index_ray
    from simtool.index import build_index, live_vectors

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    corpus = _corpus(args.docs, tmp)
    result: dict[str, object] = {"docs": args.docs, "cores": cores, "rounds": args.rounds}

    def single() -> float:
        started = time.perf_counter()
        build_index(corpus, tmp / "single", factory="Flat", gpu=False, progress=False)
        return time.perf_counter() - started

    def on_ray(workers: int) -> float:
        started = time.perf_counter()
        build_index_ray([corpus], tmp / f"ray{workers}", factory="Flat", gpu=False,
                        options=RayOptions(workers=workers, batch_size=256))  # fmt: skip
        return time.perf_counter() - started

    if not args.skip_ray:
        import ray

        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        seconds = rotated_rounds({"single": single, "ray1": lambda: on_ray(1), "ray2": lambda: on_ray(2)}, args.rounds)
        ray.shutdown()
        for name in ("ray1", "ray2"):  # the timing only means something if the indexes are the same
            np.testing.assert_allclose(live_vectors(tmp / name), live_vectors(tmp / "single"), atol=1e-5)
        result["ray_build"] = ratio_summary(seconds, "single")
        result["ray_build"]["median_docs_per_second"] = {  # type: ignore[index]
            k: round(args.docs / statistics.median(v), 1) for k, v in seconds.items()
        }
    else:
        single()

    if not args.skip_assembly:
        result["assembly"] = _assembly(args, tmp, corpus)
    shutil.rmtree(tmp, ignore_errors=True)
    _report(result, args)


def _assembly(args: argparse.Namespace, tmp: Path, corpus: Path) -> dict[str, object]:
    """Part 2 (module docstring): 8 segments from one training, merged, against a direct build and a retrain."""
    import numpy as np

    from simtool.corpus import read_documents
    from simtool.encoder import load_encoder
    from simtool.index import EncodedPart, Index, build_index, live_vectors
    from simtool.manifest import Manifest

    vectors = np.asarray(live_vectors(tmp / "single"))
    docs = list(read_documents(corpus))  # the single-process build's row order
    encoder = load_encoder(None, None, "cpu")
    per = -(-len(docs) // args.shards)
    parts = [EncodedPart(docs[i : i + per], vectors[i : i + per]) for i in range(0, len(docs), per)]

    def sharded(name: str) -> Path:
        shutil.rmtree(tmp / name, ignore_errors=True)
        build_index(iter(parts), tmp / name, model=encoder, factory=args.factory, gpu=False, progress=False,
                    segment_rows=per)  # fmt: skip
        return tmp / name

    def assemble() -> float:
        path = sharded("assembled")
        started = time.perf_counter()
        Index(path, gpu=False, encoder=encoder).compact()
        return time.perf_counter() - started

    def retrain() -> float:
        path = sharded("retrained")
        started = time.perf_counter()
        Index(path, gpu=False, encoder=encoder).compact(retrain=True)
        return time.perf_counter() - started

    def direct() -> float:
        shutil.rmtree(tmp / "direct", ignore_errors=True)
        started = time.perf_counter()
        build_index(parts, tmp / "direct", model=encoder, factory=args.factory, gpu=False, progress=False)
        return time.perf_counter() - started

    seconds = rotated_rounds({"direct": direct, "assemble": assemble, "retrain": retrain}, args.rounds)
    assert Manifest.load(tmp / "assembled").segments[0].ondisk
    return {"factory": args.factory, "shards": len(parts), **ratio_summary(seconds, "direct")}


def _report(result: dict[str, object], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.docs} Multi30k captions, default model, {result['cores']} cores, {args.rounds} rounds")
    for part, base in (("ray_build", "single"), ("assembly", "direct")):
        if part not in result:
            continue
        summary = result[part]
        assert isinstance(summary, dict)
        print(f"{part}:")
        print_ratio_summary(summary, base)


if __name__ == "__main__":
    main()
