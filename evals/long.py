"""Long-document retrieval benchmark (issue 13): truncation vs chunking vs hierarchical position extension.

Two sets, built deterministically from a seed:

- ``pydoc``: Python's reference topics (``pydoc_data.topics``); a document is a whole topic, a query is
  the first sentence of one of its paragraphs, and the relevant document is that topic.
- ``scifact``: BEIR SciFact test queries; each long document concatenates ``abstracts_per_doc`` abstracts,
  the query's relevant abstract at a random slot among fillers no selected query judges relevant.

nDCG@10 is reported overall and by the word-piece position where the relevant passage starts
(:data:`BUCKETS`), with each method's document-encoding time and vector bytes. Queries are short, so
every method encodes them with the same weights (an extended model gives short texts bitwise the
original vectors).
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simtool.errors import SimtoolError

from .metrics import evaluate_run

log = logging.getLogger(__name__)

BUCKETS: tuple[tuple[int, int | None], ...] = ((0, 512), (512, 1024), (1024, 2048), (2048, None))


@dataclass(frozen=True)
class LongQuery:
    id: str
    text: str
    doc_id: str
    start_char: int  # where the relevant passage starts in the document text


@dataclass
class LongBenchmark:
    name: str
    docs: dict[str, str]
    queries: list[LongQuery]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """``mode`` is a :data:`simtool.chunking.LONG_TEXT_MODES` value; ``extend_to`` > 0 extends positions first."""

    mode: str
    max_seq_length: int | None = None
    extend_to: int = 0


METHODS: dict[str, Method] = {
    "model-max": Method("truncate"),  # the model's own max_seq_length, e.g. an extended or adapted model
    "truncate-256": Method("truncate", 256),
    "truncate-512": Method("truncate", 512),
    "chunk-mean": Method("chunk-mean"),
    "chunk-max": Method("chunk-max"),
    "hier-1024": Method("truncate", 1024, 1024),
    "hier-2048": Method("truncate", 2048, 2048),
    "hier-4096": Method("truncate", 4096, 4096),
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _first_sentence(paragraph: str) -> str:
    flat = " ".join(paragraph.split())
    return _SENTENCE_END.split(flat, maxsplit=1)[0]


def build_pydoc(*, seed: int = 0, max_queries: int = 300) -> LongBenchmark:
    """Topics of this Python's ``pydoc_data`` as documents; one query per sampled prose paragraph."""
    from pydoc_data.topics import topics

    docs = {name: text.strip() for name, text in sorted(topics.items())}
    seen: dict[str, int] = {}
    candidates: list[LongQuery] = []
    for name, text in docs.items():
        for m in re.finditer(r"(?:^|\n\n)([^\n][\s\S]*?)(?=\n\n|$)", text):
            para = m.group(1)
            if para.startswith((" ", "\t", ">>>", "*")):
                continue  # code blocks, grammar and lists: no sentence to ask
            sentence = _first_sentence(para)
            if not 6 <= len(sentence.split()) <= 40 or not sentence[:1].isupper():
                continue
            seen[sentence] = seen.get(sentence, 0) + 1
            candidates.append(LongQuery("", sentence, name, m.start(1)))
    unique = [q for q in candidates if seen[q.text] == 1]  # a sentence in two topics has two answers
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(unique)), min(max_queries, len(unique))))
    queries = [LongQuery(f"q{i}", unique[j].text, unique[j].doc_id, unique[j].start_char) for i, j in enumerate(picked)]
    return LongBenchmark("pydoc", docs, queries, {"python": sys.version.split()[0], "candidates": len(unique)})


def build_scifact(
    path: str | Path, *, seed: int = 0, n_queries: int = 60, abstracts_per_doc: int = 10
) -> LongBenchmark:
    """``n_queries`` SciFact test queries, each with one long document holding its first relevant abstract."""
    from simtool.corpus import read_documents

    from .retrieval import load_beir

    data = load_beir(path, "test")
    corpus = {d.id: d.encoded_text for d in read_documents(data.corpus_path)}
    rng = random.Random(seed)
    qids = sorted(q for q in data.qrels if q in data.queries and any(d in corpus for d in data.qrels[q]))
    qids = sorted(rng.sample(qids, min(n_queries, len(qids))))
    judged = {d for q in qids for d in data.qrels[q]}
    fillers = [d for d in sorted(corpus) if d not in judged]
    rng.shuffle(fillers)
    docs: dict[str, str] = {}
    queries: list[LongQuery] = []
    for i, qid in enumerate(qids):
        target = sorted(d for d in data.qrels[qid] if d in corpus)[0]
        parts = [fillers.pop() for _ in range(abstracts_per_doc - 1)]
        slot = rng.randrange(abstracts_per_doc)
        parts.insert(slot, target)
        texts = [corpus[d] for d in parts]
        start = sum(len(t) + 1 for t in texts[:slot])
        docs[f"long{i}"] = "\n".join(texts)
        queries.append(LongQuery(qid, data.queries[qid], f"long{i}", start))
    return LongBenchmark("scifact", docs, queries, {"abstracts_per_doc": abstracts_per_doc})


def bucket_name(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi}" if hi is not None else f"{lo}+"


def start_tokens(tokenizer: Any, bench: LongBenchmark) -> list[int]:
    """Word-piece position (after ``[CLS]``) where each query's relevant passage starts."""
    prefixes = [bench.docs[q.doc_id][: q.start_char] for q in bench.queries]
    ids = tokenizer(prefixes, add_special_tokens=False)["input_ids"] if prefixes else []
    return [1 + len(x) for x in ids]


def _load_method(source: str | None, method: Method, device: str) -> Any:
    from simtool.encoder import load_encoder
    from simtool.positions import extend_model

    if method.extend_to:
        model = load_encoder(source, device=device)
        extend_model(model, method.extend_to)
        return model
    return load_encoder(source, device=device, max_seq_length=method.max_seq_length)


def evaluate_long(
    bench: LongBenchmark,
    model: str | None = None,
    methods: Sequence[str] = tuple(METHODS),
    *,
    batch_size: int = 32,
    device: str = "cpu",
    progress: bool = False,
    on_method: Callable[[str, dict[str, Any]], None] | None = None,
    table: Mapping[str, Method] = METHODS,
) -> dict[str, Any]:
    """Score each named method of ``table`` on ``bench``; nDCG@10 ×100 overall and per start bucket."""
    from simtool.chunking import encode_chunked, search_chunk_max
    from simtool.encoder import encode_texts, load_encoder

    unknown = [m for m in methods if m not in table]
    if unknown:
        raise SimtoolError(f"methods: unknown {', '.join(unknown)}; choose from {', '.join(table)}")
    if not bench.queries:
        raise SimtoolError(f"benchmark {bench.name!r} has no queries")
    base = load_encoder(model, device=device)
    starts = start_tokens(base.tokenizer, bench)
    qvec = encode_texts(base, [q.text for q in bench.queries], batch_size=batch_size)
    doc_ids = list(bench.docs)
    doc_texts = [bench.docs[d] for d in doc_ids]
    doc_tokens = [len(x) + 2 for x in base.tokenizer(doc_texts, add_special_tokens=False)["input_ids"]]
    qrels = {q.id: {q.doc_id: 1} for q in bench.queries}
    buckets = {bucket_name(lo, hi): [q.id for q, s in zip(bench.queries, starts, strict=True)
                                     if s >= lo and (hi is None or s < hi)] for lo, hi in BUCKETS}  # fmt: skip
    rows: dict[str, Any] = {}
    for name in methods:
        method = table[name]
        encoder = _load_method(model, method, device)
        # attention memory grows with length²; keep a batch near 8k word pieces
        bs = max(1, min(batch_size, 8192 // int(encoder.max_seq_length)))
        t0 = time.perf_counter()
        enc = encode_chunked(encoder, doc_texts, mode=method.mode, batch_size=bs, progress=progress)
        seconds = time.perf_counter() - t0
        scores, top = search_chunk_max(qvec, enc.vectors, enc.owners, len(doc_ids), k=100)
        run = {q.id: {doc_ids[int(j)]: float(s) for s, j in zip(scores[i], top[i], strict=True)}
               for i, q in enumerate(bench.queries)}  # fmt: skip
        mean, per_query = evaluate_run(qrels, run, k_values=(10,), mrr_k_values=(10,))
        by_bucket = {
            b: (100.0 * float(np.mean([per_query[q]["ndcg_at_10"] for q in ids])) if ids else None)
            for b, ids in buckets.items()
        }
        row = {
            "ndcg_at_10": 100.0 * mean["ndcg_at_10"],
            "ndcg_at_10_by_start": by_bucket,
            "after_512": _after(per_query, buckets),
            "encode_seconds": round(seconds, 2),
            "vectors": len(enc.vectors),
            "index_bytes": int(enc.vectors.nbytes),
            "max_seq_length": int(encoder.max_seq_length),
        }
        rows[name] = row
        log.info("%s %s: nDCG@10 %.2f in %.1fs", bench.name, name, row["ndcg_at_10"], seconds)
        if on_method is not None:
            on_method(name, row)
    return {
        "benchmark": bench.name,
        "model": model or "all-MiniLM-L6-v2",
        "docs": len(doc_ids),
        "queries": len(bench.queries),
        "doc_tokens_median": int(np.median(doc_tokens)),
        "doc_tokens_max": int(max(doc_tokens)),
        "queries_by_start": {b: len(ids) for b, ids in buckets.items()},
        "info": bench.info,
        "methods": rows,
    }


def _after(per_query: dict[str, dict[str, float]], buckets: dict[str, list[str]]) -> float | None:
    """nDCG@10 ×100 over every query whose passage starts at token 512 or later (the goal's subset)."""
    ids = [q for b, qs in buckets.items() if not b.startswith("0-") for q in qs]
    return 100.0 * float(np.mean([per_query[q]["ndcg_at_10"] for q in ids])) if ids else None


def markdown_table(result: dict[str, Any]) -> str:
    heads = list(result["queries_by_start"])
    lines = [
        f"{result['benchmark']}: {result['docs']} docs (median {result['doc_tokens_median']} / max "
        f"{result['doc_tokens_max']} tokens), {result['queries']} queries, model {result['model']}",
        "",
        "| method | nDCG@10 | ≥512 | "
        + " | ".join(f"{h} (n={result['queries_by_start'][h]})" for h in heads)
        + " | encode s | vectors | bytes |",
        "|---" * (len(heads) + 6) + "|",
    ]
    for name, r in result["methods"].items():
        cells = [_cell(r["ndcg_at_10_by_start"][h]) for h in heads]
        lines.append(
            f"| {name} | {r['ndcg_at_10']:.2f} | {_cell(r['after_512'])} | " + " | ".join(cells)
            + f" | {r['encode_seconds']:.1f} | {r['vectors']} | {r['index_bytes']} |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def _cell(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def write_results(result: dict[str, Any], directory: str | Path) -> Path:
    """``DIR/long_<benchmark>.json`` and ``.md``, atomically."""
    from simtool.atomic import atomic_open, atomic_write_json

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"long_{result['benchmark']}.json"
    atomic_write_json(path, result)
    with atomic_open(path.with_suffix(".md"), "w") as f:
        f.write(markdown_table(result))
    return path


__all__ = [
    "METHODS",
    "LongBenchmark",
    "LongQuery",
    "Method",
    "build_pydoc",
    "build_scifact",
    "evaluate_long",
    "start_tokens",
]
