"""Retrieval evaluation on BEIR folders, searched through simtool's own index.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (header ``query-id corpus-id score``); any of
them may be gzipped. The corpus is indexed with :func:`simtool.index.build_index` (documents
encoded as ``title + " " + text``, stripped, as BEIR and MTEB do), or an existing index
directory is used as it is, and queries are searched with :class:`simtool.retriever.Retriever`,
so whatever the index serves (an ANN factory, reducers) is what gets scored. Metrics are
``trec_eval``'s (:mod:`simtool.evals.metrics`), ×100; the main score is nDCG@10 as in MTEB.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simtool.corpus import find_data_file, iter_lines, read_queries
from simtool.errors import SimtoolError

from .metrics import DEFAULT_K_VALUES, MRR_K_VALUES, evaluate_run
from .result import EvalResult

MAIN_METRIC = "ndcg_at_10"
QUERY_CHUNK = 1024  # queries per encode + search call: bounds memory on large query sets

# BEIR folder names -> MTEB task names, so results line up with MTEB's result files.
BEIR_TASK_NAMES = {
    "arguana": "ArguAna",
    "climate-fever": "ClimateFEVER",
    "cqadupstack": "CQADupstackRetrieval",
    "dbpedia-entity": "DBPedia",
    "fever": "FEVER",
    "fiqa": "FiQA2018",
    "hotpotqa": "HotpotQA",
    "msmarco": "MSMARCO",
    "nfcorpus": "NFCorpus",
    "nq": "NQ",
    "quora": "QuoraRetrieval",
    "scidocs": "SCIDOCS",
    "scifact": "SciFact",
    "trec-covid": "TRECCOVID",
    "webis-touche2020": "Touche2020",
}


class BeirFormatError(SimtoolError):
    """A BEIR folder is incomplete or one of its files is malformed; the message names the file."""


@dataclass
class BeirData:
    """A BEIR folder's queries and one split's qrels (the corpus stays on disk: ``corpus_path``)."""

    task: str
    split: str
    root: Path
    corpus_path: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def beir_task_name(root: Path) -> str:
    return BEIR_TASK_NAMES.get(root.name.lower(), root.name)


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``query id -> {doc id -> relevance}`` from a BEIR qrels TSV (header ``query-id corpus-id score``).

    A file without the header is read too (its first line is data when its score is an integer).
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise BeirFormatError(f"{path}:{lineno}: expected query-id<TAB>corpus-id<TAB>score, got {len(fields)}")
        qid, did, score = fields[0], fields[1], fields[-1].strip()
        try:
            rel = int(score)
        except ValueError:
            try:
                as_float = float(score)
            except ValueError:
                if lineno == 1:
                    continue  # the header
                raise BeirFormatError(f"{path}:{lineno}: relevance {score!r} is not an integer") from None
            if not as_float.is_integer():
                raise BeirFormatError(f"{path}:{lineno}: relevance {score!r} is not an integer") from None
            rel = int(as_float)
        qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise BeirFormatError(f"{path}: no judgements")
    return qrels


def load_beir(path: str | Path, split: str = "test") -> BeirData:
    """Check a BEIR folder and read its queries and ``qrels/<split>.tsv``."""
    root = Path(path)
    if not root.is_dir():
        raise BeirFormatError(f"{root}: not a directory (expected a BEIR folder with corpus.jsonl)")
    corpus = find_data_file(root, "corpus.jsonl")
    queries_file = find_data_file(root, "queries.jsonl")
    for name, found in (("corpus.jsonl", corpus), ("queries.jsonl", queries_file)):
        if found is None:
            raise BeirFormatError(f"{root}: no {name} (expected the BEIR layout)")
    qrels_file = find_data_file(root / "qrels", f"{split}.tsv") if (root / "qrels").is_dir() else None
    if qrels_file is None:
        available = (
            sorted(p.name.split(".")[0] for p in (root / "qrels").glob("*.tsv*")) if (root / "qrels").is_dir() else []
        )
        raise BeirFormatError(
            f"{root / 'qrels' / f'{split}.tsv'}: no such qrels file (splits here: {', '.join(available) or 'none'})"
        )
    assert corpus is not None and queries_file is not None
    return BeirData(
        task=beir_task_name(root),
        split=split,
        root=root,
        corpus_path=corpus,
        queries=dict(read_queries(queries_file)),
        qrels=read_qrels(qrels_file),
    )


def _hits_to_run(
    qids: Sequence[str], hit_lists: list[list[Any]], top_k: int, ignore_identical_ids: bool, negate: bool
) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, hits in zip(qids, hit_lists, strict=True):
        if ignore_identical_ids:
            hits = [h for h in hits if h.id != qid]
        # l2 scores are distances (lower is closer); trec_eval ranks higher scores first.
        run[qid] = {h.id: (-h.score if negate else h.score) for h in hits[:top_k]}
    return run


@dataclass
class _RowHit:
    id: str
    score: float


def _flat_run(retriever: Any, qids: list[str], texts: list[str], k: int, batch_size: int) -> list[list[_RowHit]]:
    """Exact search over the index's raw encoder vectors with raw query vectors: the flat ideal."""
    import torch

    from simtool.encoder import encode_texts
    from simtool.vector_index import TorchExactSearcher

    vectors, ids = retriever.live_vectors()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    searcher = TorchExactSearcher(vectors, retriever.manifest.metric, device)
    if retriever.manifest.long_text.get("mode") == "chunk-max":
        return _flat_run_chunk_max(retriever, searcher, ids, texts, k, batch_size)
    out: list[list[_RowHit]] = []
    for start in range(0, len(texts), QUERY_CHUNK):
        q = encode_texts(retriever.encoder, texts[start : start + QUERY_CHUNK], batch_size=batch_size)
        scores, rows = searcher.search(q, min(k, len(vectors)))
        for srow, rrow in zip(scores, rows, strict=True):
            out.append([_RowHit(ids[r], float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0])
    return out


def _flat_run_chunk_max(
    retriever: Any, searcher: Any, ids: list[str], texts: list[str], k: int, batch_size: int
) -> list[list[_RowHit]]:
    """The flat ideal of a chunk-max index (one row per chunk, ids repeated): each document once, by its
    best chunk; a query short of k documents in the first fetch is searched over every chunk."""
    import numpy as np

    from simtool.chunking import dedupe_chunk_hits
    from simtool.encoder import encode_texts

    position = {d: i for i, d in enumerate(dict.fromkeys(ids))}
    owners = np.fromiter((position[i] for i in ids), np.int64, len(ids))
    doc_ids = list(position)
    want = min(k, len(doc_ids))
    fetch = min(len(ids), 2 * k * -(-len(ids) // max(len(doc_ids), 1)))
    out: list[list[_RowHit]] = []
    for start in range(0, len(texts), QUERY_CHUNK):
        q = encode_texts(retriever.encoder, texts[start : start + QUERY_CHUNK], batch_size=batch_size)
        scores, rows = searcher.search(q, fetch)
        for qi, (srow, rrow) in enumerate(zip(scores, rows, strict=True)):
            doc_s, docs = dedupe_chunk_hits(srow, rrow, owners, k)
            if len(docs) < want:
                s_all, r_all = searcher.search(q[qi : qi + 1], len(ids))
                doc_s, docs = dedupe_chunk_hits(s_all[0], r_all[0], owners, k)
            out.append([_RowHit(doc_ids[d], s) for s, d in zip(doc_s, docs, strict=True)])
    return out


def _metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], top_k: int, k_values: Sequence[int]
) -> dict[str, float]:
    ks = [k for k in k_values if k <= top_k]
    mrr_ks = [k for k in MRR_K_VALUES if k <= top_k]
    mean, _ = evaluate_run(qrels, run, ks, mrr_ks)
    return {name: 100.0 * value for name, value in mean.items()}


def evaluate_retrieval(
    beir_dir: str | Path,
    *,
    split: str = "test",
    model: Any = None,
    index_dir: str | Path | None = None,
    factory: str | None = None,
    top_k: int = 100,
    ignore_identical_ids: bool = False,
    compare_flat: bool = False,
    batch_size: int = 64,
    search_params: dict[str, int] | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    gpu: bool = True,
    progress: bool = False,
    backend: str | None = None,
) -> EvalResult:
    """Index a BEIR corpus (or use ``index_dir`` if it already holds an index), search, and score.

    ``model``: ``None`` (the default model), a name or path, or an encoder from
    :func:`simtool.load_encoder`; with an existing index it must be the index's model.
    ``factory`` (default ``Flat``, exact as MTEB) applies when a new index is built; a new
    index goes to ``index_dir`` when given (kept for reuse), else to a temporary directory.
    ``ignore_identical_ids`` drops hits whose id equals the query id (ArguAna, Quora).
    ``compare_flat`` adds ``scores["flat"]``: the same metrics from exact search over the
    index's raw encoder vectors. qrels documents absent from the index and judged queries
    absent from ``queries.jsonl`` are counted in ``scores`` (``qrels_docs_missing``,
    ``qrels_queries_missing``), not errors. ``backend``: the encode backend when ``model`` is a name
    (``None``: ``torch``) and for the queries of an existing index (``None``: the index's own; see
    :mod:`simtool.backends.compat`); ``info["encode_backend"]`` records the one that encoded the queries.
    """
    if top_k < 10:
        raise SimtoolError(f"top_k must be at least 10 (the main score is nDCG@10), got {top_k}")
    started = time.perf_counter()
    data = load_beir(beir_dir, split)
    with tempfile.TemporaryDirectory(prefix="simtool-eval-") as tmp:
        target, built = _index_for(
            data, index_dir, Path(tmp) / "index", model, factory, batch_size, gpu, progress, backend
        )
        query_backend = None if built else backend  # a fresh index: queries exactly as its documents
        result = _search_and_score(
            data,
            target,
            top_k,
            ignore_identical_ids,
            compare_flat,
            batch_size,
            search_params,
            k_values,
            gpu,
            query_backend,
        )
    result.info.update(index_built=built, seconds=time.perf_counter() - started)
    if index_dir is not None:
        result.info["index_dir"] = str(index_dir)
    return result


def _index_for(
    data: BeirData,
    index_dir: str | Path | None,
    temp_target: Path,
    model: Any,
    factory: str | None,
    batch_size: int,
    gpu: bool,
    progress: bool,
    backend: str | None = None,
) -> tuple[Path, bool]:
    """The index directory to search and whether it was built now."""
    from simtool.index import build_index, check_same_model
    from simtool.manifest import MANIFEST_NAME, Manifest

    if index_dir is not None and (Path(index_dir) / MANIFEST_NAME).exists():
        target = Path(index_dir)
        if factory is not None:
            raise SimtoolError(f"{target}: holds an index already; factory applies only when building a new one")
        if model is not None:
            from simtool.encoder import load_encoder

            encoder = model if not isinstance(model, (str, Path)) else load_encoder(model)
            check_same_model(Manifest.load(target), encoder)
        return target, False
    target = Path(index_dir) if index_dir is not None else temp_target
    build_index(
        data.corpus_path,
        target,
        model=model,
        factory=factory or "Flat",
        metric="ip",
        gpu=gpu,
        batch_size=batch_size,
        progress=progress,
        backend=backend or "torch",
    )
    return target, True


def _search_and_score(
    data: BeirData,
    target: Path,
    top_k: int,
    ignore_identical_ids: bool,
    compare_flat: bool,
    batch_size: int,
    search_params: dict[str, int] | None,
    k_values: Sequence[int],
    gpu: bool,
    encode_backend: str | None = None,
) -> EvalResult:
    from simtool.backends import backend_info
    from simtool.retriever import Retriever

    qids = [q for q in data.qrels if data.queries.get(q, "").strip()]
    texts = [data.queries[q] for q in qids]
    k = top_k + 1 if ignore_identical_ids else top_k
    with Retriever.load(target, search_params=search_params, gpu=gpu, encode_backend=encode_backend) as retriever:
        negate = retriever.manifest.metric == "l2"  # the flat ideal's raw squared distances
        hits: list[list[Any]] = []
        for start in range(0, len(texts), QUERY_CHUNK):
            hits.extend(retriever.search(texts[start : start + QUERY_CHUNK], min(k, retriever.manifest.count)))
        run = _hits_to_run(qids, hits, top_k, ignore_identical_ids, False)  # Hit.score: higher is better
        judged_docs = sorted({d for judged in data.qrels.values() for d in judged})
        missing_docs = len(judged_docs) - len(retriever.existing_ids(judged_docs))
        scores: dict[str, Any] = _metrics(data.qrels, run, top_k, k_values)
        if compare_flat:
            flat_hits = _flat_run(retriever, qids, texts, k, batch_size)
            scores["flat"] = _metrics(
                data.qrels, _hits_to_run(qids, flat_hits, top_k, ignore_identical_ids, negate), top_k, k_values
            )
        manifest = retriever.manifest
        assert retriever.encoder is not None  # opened with its model: it searched with text queries above
        info = {
            "factory": manifest.factory,
            "metric": manifest.metric,
            "search_params": {**manifest.search_params, **(search_params or {})},
            "reducers": manifest.reducers,
            "backend": retriever.backend,
            "encode_backend": backend_info(retriever.encoder),
            "model": manifest.model.name_or_path,
            "fingerprint": manifest.model.fingerprint,
            "documents": manifest.count,
        }
    scores["qrels_docs_missing"] = missing_docs
    scores["qrels_queries_missing"] = len(data.qrels) - len(qids)
    return EvalResult(
        task=data.task,
        split=data.split,
        n=len(qids),
        main_score=scores[MAIN_METRIC],
        scores=scores,
        main_metric=MAIN_METRIC,
        info=info,
    )
