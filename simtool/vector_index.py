"""Vector indexes: FAISS on CPU or GPU, and an exact torch search for machines with CUDA but no faiss-gpu.

Indexes are described by FAISS ``index_factory`` strings. ``auto`` picks one by corpus
size and memory (:func:`choose_factory`). FAISS is imported lazily so that the torch
path works where faiss is not installed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from simtool.errors import SimtoolError
from simtool.validate import check_metric

FLAT_MAX_N = 100_000
GPU_MAX_K = 2048  # faiss-gpu's k-selection limit; larger k is served on the CPU copy
ADD_CHUNK = 65_536
IVFDATA_SUFFIX = ".ivfdata"  # beside an index whose inverted lists live on disk

log = logging.getLogger(__name__)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise SimtoolError("faiss is not installed; `pip install faiss-cpu` (or faiss-gpu-cu12)") from None
    return faiss


def faiss_metric(metric: str) -> int:
    faiss = _faiss()
    check_metric(metric)
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def default_memory_budget() -> int:
    """Half of physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


HNSW_BYTES_PER_VECTOR = 32 * 2 * 4 + 16  # HNSW32 level-0 links (int32) plus upper levels, amortised


def choose_factory(n: int, dim: int, memory_budget: int | None = None) -> str:
    """The ``--factory auto`` rule.

    - ``n < 100k``: ``Flat``, exact; brute force is a few ms per query at that size.
    - otherwise ``HNSW32,Flat`` when the vectors and the graph (n·(4d + 272)·1.1 bytes) fit in
      the budget: on 1M real-embedding-like vectors it kept recall@10 0.98 at 35x the QPS
      of Flat (benchmarks/bench_search.py), where IVF needed nprobe 128 for 0.96 at 6.6x;
    - else ``IVF{nlist},PQ{m}``, ``nlist`` = 4·√n rounded to a power of two (1M → 4096), trained
      on a sample, ``m`` the largest divisor of d ≤ d/4 (codes 16x smaller than float32).
    """
    if n < FLAT_MAX_N:
        return "Flat"
    budget = default_memory_budget() if memory_budget is None else memory_budget
    if n * (dim * 4 + HNSW_BYTES_PER_VECTOR) * 1.1 <= budget:
        return "HNSW32,Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    m = max(d for d in range(1, dim // 4 + 1) if dim % d == 0)
    return f"IVF{nlist},PQ{m}"


def default_search_params(factory: str) -> dict[str, int]:
    """nprobe = nlist/32 (≥ 8) for IVF; efSearch = 64 for HNSW (faiss's 16 loses recall).

    Measured on real caption embeddings: IVF1024 nprobe 32 → recall@10 0.962 at 100k;
    HNSW32 efSearch 64 → 0.982 at 1M.
    """
    params: dict[str, int] = {}
    if m := re.search(r"IVF(\d+)", factory):
        params["nprobe"] = max(8, int(m.group(1)) // 32)
    if "HNSW" in factory:
        params["efSearch"] = 64
    return params


def new_faiss_index(factory: str, dim: int, metric: str) -> Any:
    faiss = _faiss()
    try:
        return faiss.index_factory(dim, factory, faiss_metric(metric))
    except RuntimeError as e:
        reason = str(e).strip().rsplit(": ", 1)[-1] or "invalid"
        raise SimtoolError(f"factory={factory!r} is unknown or invalid for dim {dim}: {reason}") from None


def training_sample_size(index: Any) -> int:
    """Points needed to train: 64 per IVF list, and 256·39 for PQ codebooks."""
    faiss = _faiss()
    need = 0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        need = 64 * ivf.nlist
    if "PQ" in type(index).__name__ or (ivf is not None and "PQ" in type(ivf).__name__):
        need = max(need, 256 * 39)
    return max(need, 1)


def needs_training(factory: str, dim: int) -> bool:
    """Whether a FAISS index of this factory must be trained (IVF, PQ, SQ...) before vectors are added."""
    return not new_faiss_index(factory, dim, "ip").is_trained


def is_ivf(index: Any) -> bool:
    """An inverted-file index (possibly behind a pre-transform), whose lists can be merged."""
    return _faiss().try_extract_index_ivf(index) is not None


def training_rows(n: int, index: Any, seed: int = 0) -> np.ndarray:
    """The seeded, sorted sample of row numbers out of ``n`` that trains ``index``."""
    faiss = _faiss()
    size = training_sample_size(index)
    if n < size and "IVF" in type(faiss.try_extract_index_ivf(index) or index).__name__:
        nlist = faiss.extract_index_ivf(index).nlist
        if n < nlist:
            raise SimtoolError(f"{n} vectors cannot train an index with {nlist} IVF lists; use fewer lists")
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def fill_index(
    index: Any,
    vectors: np.ndarray,
    *,
    gpu: bool = False,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> Any:
    """Train ``index`` if needed on a seeded sample of ``vectors`` ``(n, d) float32`` and add them all.

    With ``gpu`` and faiss GPUs present the work runs on GPU; the returned index is on the CPU.
    ``vectors`` may be any sized object that slices and takes sorted row arrays (a memmap, a lazy view).
    """
    faiss = _faiss()
    work = to_gpu(index) if gpu else None
    target = work if work is not None else index
    n = len(vectors)
    if not target.is_trained:
        target.train(np.ascontiguousarray(vectors[training_rows(n, index, seed)], dtype=np.float32))
    for start in range(0, n, ADD_CHUNK):
        chunk = np.ascontiguousarray(vectors[start : start + ADD_CHUNK], dtype=np.float32)
        target.add(chunk)
        if on_progress:
            on_progress(len(chunk))
    return faiss.index_gpu_to_cpu(work) if work is not None else index


def trained_index(factory: str, dim: int, metric: str, vectors: Any, *, gpu: bool = False, seed: int = 0) -> Any:
    """A new, empty ``factory`` index trained on the seeded sample of ``vectors`` (n, dim) that
    :func:`fill_index` would train on: filling it gives what ``fill_index`` gives."""
    faiss = _faiss()
    index = new_faiss_index(factory, dim, metric)
    work = to_gpu(index) if gpu else None
    target = work if work is not None else index
    target.train(np.ascontiguousarray(vectors[training_rows(len(vectors), index, seed)], dtype=np.float32))
    return faiss.index_gpu_to_cpu(work) if work is not None else index


def read_faiss(path: Path, *, ondisk: bool = False) -> Any:
    """Open a FAISS file read-only, memory-mapped where the type allows.

    ``ondisk``: its inverted lists live in ``<path>.ivfdata`` beside it (written by
    :func:`merge_inverted_lists`). FAISS stores that file's path as it was at write time, so the
    lists are re-attached here from the file's current directory: a moved index still opens.
    """
    faiss = _faiss()
    if not ondisk:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    lists.filename = str(path.with_suffix(IVFDATA_SUFFIX))
    lists.read_only = True
    lists.do_mmap()
    return index


def merge_inverted_lists(template: Any, shards: Sequence[Any], path: Path) -> Any:
    """One IVF index holding every shard's vectors, its lists written to ``<path>.ivfdata``.

    The steps of ``faiss.contrib.ondisk.merge_ondisk``, with the shards already open (simtool
    re-attaches on-disk lists itself, see :func:`read_faiss`): no vector is re-encoded and the
    lists never need to fit in memory. Every shard is ``template`` (trained, empty) plus vectors
    with ids ``0..n-1``; in the result, shard ``j``'s ids follow those of shards ``0..j-1``. The
    result is written to ``path``.
    """
    faiss = _faiss()
    index = faiss.clone_index(template)
    ivf = faiss.extract_index_ivf(index)
    if index.ntotal:
        raise SimtoolError("merge_inverted_lists: the template must be empty")
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(path.with_suffix(IVFDATA_SUFFIX)))
    inputs = faiss.InvertedListsPtrVector()
    for shard in shards:
        inputs.push_back(faiss.extract_index_ivf(shard).invlists)
    # Not shift_ids=True: faiss 1.15 offsets shard i by the sizes of shards 1..i, not 0..i-1. The lists
    # come out shard after shard, so the ids are shifted here, in the mapped file.
    with _c_stdout_to_log():
        ntotal = lists.merge_from_multiple(inputs.data(), inputs.size(), False)
    _shift_ids(lists, [faiss.extract_index_ivf(s).invlists for s in shards], [s.ntotal for s in shards])
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    faiss.write_index(index, str(path))
    return index


def _shift_ids(lists: Any, inputs: Sequence[Any], sizes: Sequence[int]) -> None:
    """Give the entries of ``inputs[j]`` in the merged ``lists`` ids ``offset_j + id``; checks that
    the result numbers the rows ``0..n-1`` exactly once."""
    faiss = _faiss()
    offsets = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
    seen = np.zeros(int(sum(sizes)), dtype=bool)
    for j in range(lists.nlist):
        n = lists.list_size(j)
        if n == 0:
            continue
        ptr = lists.get_ids(j)
        ids = faiss.rev_swig_ptr(ptr, n)  # a view of the mapped file: shifted in place
        pos = 0
        for src, offset in zip(inputs, offsets, strict=True):
            m = src.list_size(j)
            ids[pos : pos + m] += offset
            pos += m
        seen[ids] = True
        lists.release_ids(j, ptr)
    if not seen.all():
        raise SimtoolError("merge_inverted_lists: the merged ids do not number every row once")


@contextlib.contextmanager
def _c_stdout_to_log() -> Iterator[None]:
    """FAISS's on-disk lists printf their resizing to stdout, where it would corrupt ``--json``
    output: send file descriptor 1 to a temporary file for the duration and log what came."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                log.debug("faiss: %s", line)


def to_gpu(index: Any) -> Any | None:
    """A GPU copy of ``index`` when faiss sees GPUs and supports this index type, else None."""
    faiss = _faiss()
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):
        return None  # e.g. HNSW has no GPU implementation


def apply_search_params(index: Any, params: dict[str, int]) -> None:
    if params:
        faiss = _faiss()
        faiss.ParameterSpace().set_index_parameters(index, ",".join(f"{k}={v}" for k, v in params.items()))


@runtime_checkable
class Searcher(Protocol):
    """Top-k search over an index; returns ``(scores, rows)``, each ``(nq, k)``; missing hits have row -1."""

    backend: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@runtime_checkable
class MaskedSearcher(Searcher, Protocol):
    """A :class:`Searcher` that can leave rows out: ``allowed`` is ``(n,)`` bool of rows that may be returned."""

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


class FaissSearcher:
    """Searches a CPU FAISS index, through its GPU copy when one exists and k allows."""

    def __init__(self, index: Any, params: dict[str, int], *, gpu: bool = True) -> None:
        apply_search_params(index, params)
        self._cpu = index
        self._gpu = to_gpu(index) if gpu else None
        if self._gpu is not None:
            apply_search_params(self._gpu, params)
        self.backend = "faiss-gpu" if self._gpu is not None else "faiss-cpu"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._gpu if self._gpu is not None and k <= GPU_MAX_K else self._cpu
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class TorchExactSearcher:
    """Exact search as a matmul + top-k in torch; scores match FAISS (inner product, or squared L2).

    Used on CUDA when faiss has no GPU support; runs on any torch device.
    ``vectors`` is ``(n, d) float32``; the corpus is scanned in blocks so memory stays bounded.
    """

    def __init__(self, vectors: np.ndarray, metric: str, device: str, block_rows: int = 1 << 18) -> None:
        import torch

        check_metric(metric)
        self.metric = metric
        self.device = torch.device(device)
        self._x = torch.as_tensor(np.array(vectors, dtype=np.float32), device=self.device)
        self._sq_norms = (self._x * self._x).sum(dim=1) if metric == "l2" else None
        self._block = block_rows
        self.backend = f"torch-{self.device.type}"

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``allowed``: ``(n,)`` bool of rows that may be returned (None: all)."""
        import torch

        with torch.inference_mode():
            return self._search(torch, queries, k, allowed)

    def _search(
        self, torch: Any, queries: np.ndarray, k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device)
        mask = None if allowed is None else torch.from_numpy(np.asarray(allowed, dtype=bool)).to(self.device)
        n = self._x.shape[0]
        best_s = torch.full((q.shape[0], 0), 0.0, device=self.device)
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=self.device)
        for start in range(0, n, self._block):
            block = self._x[start : start + self._block]
            s = q @ block.T
            if self._sq_norms is not None:
                # negated squared distance, so that larger is better for every metric
                s = 2 * s - self._sq_norms[start : start + self._block] - (q * q).sum(dim=1, keepdim=True)
            if mask is not None:
                s = s.masked_fill(~mask[start : start + self._block], float("-inf"))
            s, i = torch.topk(s, min(k, s.shape[1]), dim=1)
            best_s, order = torch.topk(torch.cat([best_s, s], dim=1), min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.gather(torch.cat([best_i, i + start], dim=1), 1, order)
        scores = best_s.cpu().numpy()
        rows = best_i.cpu().numpy()
        rows[np.isneginf(scores)] = -1
        if self.metric == "l2":
            scores = -scores
        if rows.shape[1] < k:  # fewer vectors than k: pad like FAISS
            pad = k - rows.shape[1]
            fill = np.inf if self.metric == "l2" else -np.inf
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=fill)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), rows.astype(np.int64)
