"""A dev set that looks like the test set ("adversarial validation"): carve it out of the training rows.

A logistic regression learns to tell training rows from test rows on their embeddings; the
training rows it scores as most test-like become the dev set, the rest stay training rows.
Every training row is scored by a model that did not see it (k-fold, out-of-fold
probabilities), and the AUC reported is that of the same out-of-fold predictions over train
and test rows: near 0.5 means the two sets already look alike.

Files are handled as lines and written back byte for byte: a header line (CSV/TSV with a
header) is repeated in both outputs, and rows keep their input order. A row's embedding is
the mean of its texts' embeddings (both sentences of an STS or training pair).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simtool.atomic import atomic_open
from simtool.errors import SimtoolError

log = logging.getLogger(__name__)

# text fields by format, first match wins: STS pairs, training pairs/triplets, corpora
TEXT_FIELDS: tuple[tuple[str, ...], ...] = (
    ("sentence1", "sentence2"),
    ("sent0", "sent1", "hard_neg"),
    ("sent0", "sent1"),
    ("anchor", "positive", "negative"),
    ("anchor", "positive"),
    ("query", "positive"),
    ("title", "text"),
    ("text",),
    ("sentence",),
)
STSB_ORIGINAL_FIELDS = (5, 6)  # headerless STS-B TSV: genre, file, year, id, score, sentence1, sentence2


@dataclass
class RowFile:
    """A file split into an optional header line and data lines (bytes, newline kept), with each row's texts."""

    path: Path
    header: bytes | None
    lines: list[bytes]
    texts: list[list[str]]
    layout: str

    def __len__(self) -> int:
        return len(self.lines)


def _open(path: Path) -> Any:
    try:
        f = open(path, "rb")  # noqa: SIM115 - returned
        if f.peek(2)[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=f, mode="rb")
        return f
    except OSError as e:
        raise SimtoolError(f"cannot read {path}: {e.strerror or e}") from None


def _decode(path: Path, lineno: int, line: bytes) -> str:
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SimtoolError(f"{path}:{lineno}: not UTF-8") from None


def read_rows(path: str | Path) -> RowFile:
    """Read a ``.txt`` (one text a line), ``.jsonl``, ``.csv``/``.tsv`` (with a header, or headerless STS-B)."""
    path = Path(path)
    if not path.is_file():
        raise SimtoolError(f"cannot read {path}: no such file")
    try:
        with _open(path) as f:
            raw = [line for line in f if line.strip()]
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise SimtoolError(f"cannot read {path}: {e}") from None
    if not raw:
        raise SimtoolError(f"{path} holds no rows")
    if not raw[-1].endswith(b"\n"):
        raw[-1] += b"\n"
    name = path.name.removesuffix(".gz").lower()
    if name.endswith(".jsonl") or name.endswith(".json"):
        return _read_jsonl(path, raw)
    if name.endswith(".csv") or name.endswith(".tsv"):
        # STS-B's official files are tab-separated despite their .csv names
        tab = name.endswith(".tsv") or b"\t" in raw[0]
        return _read_table(path, raw, "\t" if tab else ",")
    texts = [[_decode(path, i + 1, line)] for i, line in enumerate(raw)]
    return RowFile(path, None, raw, texts, "txt")


def _pick_fields(path: Path, keys: Sequence[str]) -> tuple[str, ...]:
    for fields in TEXT_FIELDS:
        if all(k in keys for k in fields):
            return fields
    raise SimtoolError(f"{path}: no text fields found (looked for {', '.join('/'.join(f) for f in TEXT_FIELDS)})")


def _read_jsonl(path: Path, raw: list[bytes]) -> RowFile:
    texts: list[list[str]] = []
    fields: tuple[str, ...] | None = None
    for i, line in enumerate(raw, 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SimtoolError(f"{path}:{i}: not JSON ({e.msg})") from None
        except UnicodeDecodeError:
            raise SimtoolError(f"{path}:{i}: not UTF-8 text") from None
        if not isinstance(obj, dict):
            raise SimtoolError(f"{path}:{i}: expected a JSON object")
        fields = fields or _pick_fields(path, list(obj))
        if any(not isinstance(obj.get(k), str) for k in fields):
            raise SimtoolError(f"{path}:{i}: fields {', '.join(fields)} must be strings")
        texts.append([obj[k] for k in fields])
    return RowFile(path, None, raw, texts, "jsonl:" + ",".join(fields or ()))


def _read_table(path: Path, raw: list[bytes], delimiter: str) -> RowFile:
    bare_quotes = delimiter == "\t"  # STS-B TSVs hold bare quotes

    def cells(i: int, line: bytes) -> list[str]:
        text = [_decode(path, i, line)]
        if bare_quotes:
            return next(csv.reader(text, delimiter=delimiter, quoting=csv.QUOTE_NONE))
        return next(csv.reader(text, delimiter=delimiter))

    first = cells(1, raw[0])
    cols: tuple[int, ...]
    try:
        fields = _pick_fields(path, first)
    except SimtoolError:
        if delimiter == "\t" and len(first) > max(STSB_ORIGINAL_FIELDS):
            cols, header, body, start, layout = STSB_ORIGINAL_FIELDS, None, raw, 1, "stsb-original"
        else:
            raise
    else:
        cols, header, body, start = tuple(first.index(f) for f in fields), raw[0], raw[1:], 2
        layout = "table:" + ",".join(fields)
    texts: list[list[str]] = []
    for i, line in enumerate(body, start):
        row = cells(i, line)
        if len(row) <= max(cols):
            raise SimtoolError(f"{path}:{i}: expected at least {max(cols) + 1} fields, got {len(row)}")
        texts.append([row[c] for c in cols])
    if not body:
        raise SimtoolError(f"{path} holds a header and no rows")
    return RowFile(path, header, body, texts, layout)


Embed = Callable[[list[str]], np.ndarray]


def row_embeddings(rows: RowFile, embed: Embed) -> np.ndarray:
    """``(n, d)`` float32: the mean of each row's text embeddings (texts encoded once, flat)."""
    width = len(rows.texts[0])
    flat = [t for row in rows.texts for t in row]
    emb = np.asarray(embed(flat), dtype=np.float32)
    if emb.ndim != 2 or len(emb) != len(flat):
        raise SimtoolError(f"the encoder returned shape {emb.shape} for {len(flat)} texts")
    return emb.reshape(len(rows), width, -1).mean(axis=1)


@dataclass
class DevSplit:
    """Result of :func:`like_split`: row indices into TRAIN (sorted), P(test) per train row, and the AUC."""

    dev: np.ndarray
    train: np.ndarray
    test_probability: np.ndarray
    auc: float
    folds: int

    def to_json(self) -> dict[str, Any]:
        return {
            "dev_rows": len(self.dev),
            "train_rows": len(self.train),
            "auc": self.auc,
            "auc_kind": f"{self.folds}-fold cross-validated (out-of-fold predictions on train and test rows)",
            "dev_mean_test_probability": float(self.test_probability[self.dev].mean()),
            "train_mean_test_probability": float(self.test_probability[self.train].mean()) if len(self.train) else None,
        }


def like_split(
    train_vectors: np.ndarray, test_vectors: np.ndarray, dev_size: int, *, folds: int = 5, seed: int = 0
) -> DevSplit:
    """Pick the ``dev_size`` rows of ``train_vectors`` ``(n, d)`` most like ``test_vectors`` ``(m, d)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, m = len(train_vectors), len(test_vectors)
    if train_vectors.ndim != 2 or test_vectors.ndim != 2:
        raise SimtoolError("train_vectors and test_vectors must be 2-d (n, d)")
    if train_vectors.shape[1] != test_vectors.shape[1]:
        raise SimtoolError(
            f"train_vectors and test_vectors differ in dimension: {train_vectors.shape[1]} and {test_vectors.shape[1]}"
        )
    if not 0 < dev_size < n:
        raise SimtoolError(f"dev_size must be between 1 and {n - 1} (the train rows less one), got {dev_size}")
    if min(n, m) < folds:
        raise SimtoolError(f"need at least {folds} rows on each side for {folds}-fold scoring, got {n} and {m}")
    x = np.vstack([train_vectors, test_vectors]).astype(np.float64)
    y = np.r_[np.zeros(n, dtype=np.int64), np.ones(m, dtype=np.int64)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, proba))
    p_train = proba[:n]
    order = np.argsort(-p_train, kind="stable")
    dev = np.sort(order[:dev_size])
    train = np.sort(order[dev_size:])
    log.info("like_split: AUC %.3f, dev %d rows", auc, dev_size)
    return DevSplit(dev=dev, train=train, test_probability=p_train, auc=auc, folds=folds)


def _output_name(rows: RowFile, stem: str) -> str:
    name = rows.path.name
    suffix = "".join(rows.path.suffixes[-2:]) if name.endswith(".gz") else rows.path.suffix
    return stem + suffix


def write_split(rows: RowFile, split: DevSplit, output: str | Path) -> tuple[Path, Path]:
    """Write ``dev`` and ``train`` files in the input's format (gzip again if it was) into ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, idx in (("dev", split.dev), ("train", split.train)):
        target = out / _output_name(rows, stem)
        with atomic_open(target, "wb") as f:
            sink = gzip.GzipFile(fileobj=f, mode="wb", mtime=0) if target.name.endswith(".gz") else f
            if rows.header is not None:
                sink.write(rows.header)
            sink.writelines(rows.lines[i] for i in idx.tolist())
            if sink is not f:
                sink.close()
        paths.append(target)
    return paths[0], paths[1]


def split_like_files(
    train: str | Path,
    test: str | Path,
    dev_size: int,
    output: str | Path,
    embed: Embed,
    *,
    folds: int = 5,
    seed: int = 0,
) -> tuple[DevSplit, RowFile]:
    """:func:`like_split` on two files, written by :func:`write_split`; ``embed`` maps texts to ``(n, d)``."""
    train_rows, test_rows = read_rows(train), read_rows(test)
    result = like_split(
        row_embeddings(train_rows, embed), row_embeddings(test_rows, embed), dev_size, folds=folds, seed=seed
    )
    write_split(train_rows, result, output)
    return result, train_rows
