"""Semantic textual similarity: dataset readers and MTEB-style scoring.

Formats (``load_sts(path, format=...)``):

``stsb``
    STS Benchmark original release ``sts-{train,dev,test}.csv``: TSV without header, no
    quoting; score, sentence1, sentence2 are fields 4, 5, 6 (extra trailing fields ignored).
    Also sentence-transformers' ``stsbenchmark.tsv.gz`` (header with a ``split`` column).
    ``path`` is a file or a directory holding them; the split defaults to ``test``.
``senteval``
    A directory of SemEval STS files (STS12–STS16): ``STS.input.<subset>.txt`` (TSV
    ``sentence1<TAB>sentence2``, extra columns ignored) with ``STS.gs.<subset>.txt`` (one gold
    score per line; an empty line marks an unscored pair, which is skipped); 2016 names them
    ``STS2016.input.<subset>.txt`` / ``STS2016.gs.<subset>.txt``. Scored per subset, over all
    subsets concatenated (``all``, what MTEB and SimCSE report) and as the size-weighted mean
    of the per-subset scores (``wmean``, what SentEval and the whitening papers report).
``sick``
    SICK relatedness: ``SICK_train.txt``, ``SICK_trial.txt``, ``SICK_test_annotated.txt`` or
    the full ``SICK.txt`` (``SemEval_set`` column). Splits ``train``, ``trial``, ``test`` or
    ``all`` (the union, MTEB's SICK-R, the default for a directory or ``SICK.txt``).
``cn``
    ``<TASK>.<split>.data``: TSV ``s1<TAB>s2<TAB>label`` (ATEC, BQ, LCQMC, PAWSX, STS-B).
    ``path`` is the file or the task's directory (split defaults to ``test``).
``pairs``
    Any ``.csv``/``.tsv``/``.jsonl`` (optionally ``.gz``) with ``sentence1``, ``sentence2`` and
    ``score`` columns (names configurable). CSV uses standard quoting, TSV none. Rows with an
    empty score are skipped; ``split`` filters on a ``split`` column.

Every file may be gzipped and may start with a UTF-8 BOM. Bad input raises
:class:`simtool.errors.SimtoolError` with one line naming the file (and line).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simtool.corpus import find_data_file as _find_file
from simtool.corpus import iter_json_objects, iter_lines, iter_table_rows
from simtool.errors import SimtoolError
from simtool.protocols import Encoder as SentenceEncoder
from simtool.protocols import TextEncoder, encoder_info

from .metrics import sts_scores
from .result import EvalResult

STS_FORMATS = ("stsb", "senteval", "sick", "cn", "pairs")
MAIN_METRIC = "cosine_spearman"

SICK_SPLIT_FILES = {
    "train": ("SICK_train.txt",),
    "trial": ("SICK_trial.txt",),
    "test": ("SICK_test_annotated.txt", "SICK_test.txt"),
}
# Names used elsewhere for the same split, mapped to each format's own name.
_DEV_ALIASES = ("dev", "valid", "validation")
CN_TASK_NAMES = {"STS-B": "STSB"}  # C-MTEB's name for the Chinese STS-B


class StsFormatError(SimtoolError):
    """An STS file or directory cannot be read; the message names it."""


@dataclass
class StsData:
    """Sentence pairs with gold scores.

    ``scores`` is ``(n,)`` float64. ``subsets`` maps a subset name (senteval) to the range of
    pair indices it occupies; empty for single-set formats.
    """

    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    task: str
    split: str
    format: str
    path: Path
    subsets: dict[str, range] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class PairColumns:
    """Column (or JSON key) names for the ``pairs`` format."""

    sentence1: str = "sentence1"
    sentence2: str = "sentence2"
    score: str = "score"


# --------------------------------------------------------------------------- format detection


def _strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


_STSB_FILE = re.compile(r"^sts-(\w+)\.csv$", re.IGNORECASE)
_SBERT_FILE = re.compile(r"^stsbenchmark\.tsv$", re.IGNORECASE)
_SENTEVAL_INPUT = re.compile(r"^(STS|STS2016)\.input\.(.+)\.txt$")
_SICK_FILE = re.compile(r"^SICK(_\w+)?\.txt$", re.IGNORECASE)
_CN_FILE = re.compile(r"^(.+)\.([^.]+)\.data$")
_PAIRS_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def detect_sts_format(path: Path) -> str:
    """The format of an STS file or directory, from file names (see the module docstring)."""
    if path.is_dir():
        names = [_strip_gz(p.name) for p in path.iterdir() if p.is_file()]
        checks: list[tuple[str, Callable[[str], Any]]] = [
            ("stsb", lambda n: _STSB_FILE.match(n) or _SBERT_FILE.match(n)),
            ("senteval", _SENTEVAL_INPUT.match),
            ("sick", _SICK_FILE.match),
            ("cn", _CN_FILE.match),
        ]
        for fmt, check in checks:
            if any(check(n) for n in names):
                return fmt
        raise StsFormatError(f"{path}: cannot tell the STS format of this directory; pass --format")
    name = _strip_gz(path.name)
    if _STSB_FILE.match(name) or _SBERT_FILE.match(name):
        return "stsb"
    if _SENTEVAL_INPUT.match(name):
        return "senteval"
    if _SICK_FILE.match(name):
        return "sick"
    if name.endswith(".data"):
        return "cn"
    if name.lower().endswith(_PAIRS_SUFFIXES):
        return "pairs"
    raise StsFormatError(f"{path}: cannot tell the STS format from this file name; pass --format")


def load_sts(
    path: str | Path,
    format: str = "auto",
    split: str | None = None,
    *,
    columns: PairColumns = PairColumns(),
) -> StsData:
    """Read an STS dataset (file or directory) in one of :data:`STS_FORMATS`, or ``auto``-detected."""
    path = Path(path)
    if not path.exists():
        raise StsFormatError(f"{path}: no such file or directory")
    if format == "auto":
        format = detect_sts_format(path)
    readers: dict[str, Callable[..., StsData]] = {
        "stsb": _read_stsb,
        "senteval": _read_senteval,
        "sick": _read_sick,
        "cn": _read_cn,
        "pairs": _read_pairs,
    }
    if format not in readers:
        raise StsFormatError(f"unknown STS format {format!r}; choose auto or one of {', '.join(STS_FORMATS)}")
    data = _read_pairs(path, split, columns) if format == "pairs" else readers[format](path, split)
    if len(data) == 0:
        raise StsFormatError(f"{data.path}: no scored sentence pairs" + (f" in split {data.split!r}" if split else ""))
    return data


# --------------------------------------------------------------------------- shared helpers


def _float(path: Path, lineno: int, value: str, what: str = "score") -> float:
    try:
        x = float(value)
    except ValueError:
        raise StsFormatError(f"{path}:{lineno}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise StsFormatError(f"{path}:{lineno}: {what} {value!r} is not finite")
    return x


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank lines split on tabs, with no quoting at all (``csv.QUOTE_NONE``)."""
    for lineno, line in iter_lines(path):
        if line.strip():
            yield lineno, line.split("\t")


def _make(
    path: Path, fmt: str, task: str, split: str, rows: list[tuple[str, str, float]], subsets: dict[str, range] | None
) -> StsData:
    return StsData(
        sentences1=[r[0] for r in rows],
        sentences2=[r[1] for r in rows],
        scores=np.array([r[2] for r in rows], dtype=np.float64),
        task=task,
        split=split,
        format=fmt,
        path=path,
        subsets=subsets or {},
    )


def _check_implied_split(path: Path, implied: str, requested: str | None, aliases: Sequence[str] = ()) -> str:
    if requested is not None and requested != implied and not (requested in aliases and implied in aliases):
        raise StsFormatError(f"{path}: this file holds the {implied!r} split, not {requested!r}")
    return implied


# --------------------------------------------------------------------------- stsb


def _read_stsb(path: Path, split: str | None) -> StsData:
    want = split or "test"
    if want in _DEV_ALIASES:
        want = "dev"
    if path.is_dir():
        file = _find_file(path, f"sts-{want}.csv")
        if file is not None:
            return _read_stsb_original(file, want)
        sbert = _find_file(path, "stsbenchmark.tsv")
        if sbert is not None:
            return _read_stsb_sbert(sbert, want)
        raise StsFormatError(f"{path}: no sts-{want}.csv or stsbenchmark.tsv.gz for split {want!r}")
    name = _strip_gz(path.name)
    if _SBERT_FILE.match(name) or _first_line(path).startswith("split\t"):
        return _read_stsb_sbert(path, want)
    m = _STSB_FILE.match(name)
    implied = m.group(1).lower() if m else (split or path.stem)
    return _read_stsb_original(path, _check_implied_split(path, implied, split and want, _DEV_ALIASES))


def _first_line(path: Path) -> str:
    for _, line in iter_lines(path):
        return line
    return ""


def _read_stsb_original(path: Path, split: str) -> StsData:
    rows = []
    for lineno, fields in _tsv_rows(path):
        if len(fields) < 7:
            raise StsFormatError(
                f"{path}:{lineno}: expected at least 7 tab-separated fields "
                f"(genre, file, year, id, score, sentence1, sentence2), got {len(fields)}"
            )
        rows.append((fields[5], fields[6], _float(path, lineno, fields[4])))
    return _make(path, "stsb", "STSBenchmark", split, rows, None)


def _read_header(path: Path, lines: Iterator[tuple[int, list[str]]], required: Sequence[str]) -> dict[str, int]:
    try:
        lineno, header = next(lines)
    except StopIteration:
        raise StsFormatError(f"{path}: empty file") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise StsFormatError(f"{path}:{lineno}: header has no column {missing[0]!r} (header: {header})")
    return {name: i for i, name in enumerate(header)}


def _read_stsb_sbert(path: Path, split: str) -> StsData:
    lines = _tsv_rows(path)
    cols = _read_header(path, lines, ("split", "score", "sentence1", "sentence2"))
    need = max(cols["split"], cols["score"], cols["sentence1"], cols["sentence2"]) + 1
    rows, seen = [], set()
    for lineno, fields in lines:
        if len(fields) < need:
            raise StsFormatError(f"{path}:{lineno}: expected at least {need} tab-separated fields, got {len(fields)}")
        seen.add(fields[cols["split"]])
        if fields[cols["split"]] == split:
            score = _float(path, lineno, fields[cols["score"]])
            rows.append((fields[cols["sentence1"]], fields[cols["sentence2"]], score))
    if not rows:
        raise StsFormatError(f"{path}: no rows with split {split!r} (splits: {', '.join(sorted(seen)) or 'none'})")
    return _make(path, "stsb", "STSBenchmark", split, rows, None)


# --------------------------------------------------------------------------- senteval


def _senteval_inputs(directory: Path) -> list[tuple[str, Path, Path]]:
    """``(subset, input file, gold file)`` for every ``STS[2016].input.<subset>.txt[.gz]``, by subset name."""
    found = []
    for p in sorted(directory.iterdir()):
        m = _SENTEVAL_INPUT.match(_strip_gz(p.name))
        if m and p.is_file():
            prefix, subset = m.groups()
            gold = _find_file(directory, f"{prefix}.gs.{subset}.txt")
            if gold is None:
                raise StsFormatError(f"{p}: no gold file {prefix}.gs.{subset}.txt beside it")
            found.append((subset, p, gold))
    return found


def _senteval_task(directory: Path, files: list[tuple[str, Path, Path]]) -> str:
    m = re.match(r"STS(1[2-6])", directory.name, re.IGNORECASE)
    if m:
        return f"STS{m.group(1)}"
    if files and files[0][1].name.startswith("STS2016."):
        return "STS16"
    return directory.name


def _read_senteval(path: Path, split: str | None) -> StsData:
    if path.is_file():
        m = _SENTEVAL_INPUT.match(_strip_gz(path.name))
        if not m:
            raise StsFormatError(f"{path}: not an STS.input.<subset>.txt file; pass the directory")
        files = [f for f in _senteval_inputs(path.parent) if f[1] == path]
        directory = path.parent
    else:
        directory = path
        files = _senteval_inputs(path)
        if not files:
            raise StsFormatError(f"{path}: no STS.input.<subset>.txt or STS2016.input.<subset>.txt files")
    rows: list[tuple[str, str, float]] = []
    subsets: dict[str, range] = {}
    for subset, input_file, gold_file in files:
        start = len(rows)
        rows.extend(_read_senteval_subset(input_file, gold_file))
        subsets[subset] = range(start, len(rows))
    implied = "train" if "train" in directory.name.lower() else "test"
    return _make(path, "senteval", _senteval_task(directory, files), split or implied, rows, subsets)


def _read_senteval_subset(input_file: Path, gold_file: Path) -> list[tuple[str, str, float]]:
    inputs = list(iter_lines(input_file))
    golds = list(iter_lines(gold_file))
    if len(inputs) != len(golds):
        raise StsFormatError(f"{gold_file}: {len(golds)} lines, but {input_file.name} has {len(inputs)}")
    rows = []
    for (lineno, line), (_, gold) in zip(inputs, golds, strict=True):
        if not gold.strip():
            continue  # unscored pair
        fields = line.split("\t")
        if len(fields) < 2:
            raise StsFormatError(f"{input_file}:{lineno}: expected sentence1<TAB>sentence2")
        rows.append((fields[0], fields[1], _float(gold_file, lineno, gold.strip(), "gold score")))
    return rows


# --------------------------------------------------------------------------- sick


def _sick_split(requested: str | None) -> str:
    split = requested or "all"
    if split in _DEV_ALIASES:
        split = "trial"
    if split not in ("train", "trial", "test", "all"):
        raise StsFormatError(f"SICK split must be train, trial, test or all, got {requested!r}")
    return split


def _read_sick(path: Path, split: str | None) -> StsData:
    if path.is_file():
        name = _strip_gz(path.name).lower()
        implied = next((s for s, files in SICK_SPLIT_FILES.items() if name in (f.lower() for f in files)), None)
        if implied is not None:
            split = _check_implied_split(path, implied, split and _sick_split(split))
            return _make(path, "sick", "SICK-R", split, _read_sick_file(path, None), None)
        want = _sick_split(split)
        return _make(path, "sick", "SICK-R", want, _read_sick_file(path, want), None)
    want = _sick_split(split)
    full = _find_file(path, "SICK.txt")
    if full is not None:
        return _make(path, "sick", "SICK-R", want, _read_sick_file(full, want), None)
    rows: list[tuple[str, str, float]] = []
    for name in ("train", "trial", "test") if want == "all" else (want,):
        file = next((f for f in map(lambda n: _find_file(path, n), SICK_SPLIT_FILES[name]) if f is not None), None)
        if file is None:
            raise StsFormatError(f"{path}: no {SICK_SPLIT_FILES[name][0]} (nor SICK.txt) for split {name!r}")
        rows.extend(_read_sick_file(file, None))
    return _make(path, "sick", "SICK-R", want, rows, None)


def _read_sick_file(path: Path, split: str | None) -> list[tuple[str, str, float]]:
    """Rows of one SICK file; ``split`` filters on ``SemEval_set`` (``all`` keeps every row)."""
    lines = _tsv_rows(path)
    required = ["sentence_A", "sentence_B", "relatedness_score"] + (["SemEval_set"] if split else [])
    cols = _read_header(path, lines, required)
    need = max(cols[c] for c in required) + 1
    rows = []
    for lineno, fields in lines:
        if len(fields) < need:
            raise StsFormatError(f"{path}:{lineno}: expected at least {need} tab-separated fields, got {len(fields)}")
        if split and split != "all" and fields[cols["SemEval_set"]].strip().lower() != split:
            continue
        score = _float(path, lineno, fields[cols["relatedness_score"]])
        rows.append((fields[cols["sentence_A"]], fields[cols["sentence_B"]], score))
    return rows


# --------------------------------------------------------------------------- cn


def _cn_split_names(split: str) -> tuple[str, ...]:
    return ("valid", "dev", "validation") if split in _DEV_ALIASES else (split,)


def _read_cn(path: Path, split: str | None) -> StsData:
    if path.is_dir():
        want = split or "test"
        files = sorted(
            p
            for p in path.iterdir()
            if (m := _CN_FILE.match(_strip_gz(p.name))) and m.group(2) in _cn_split_names(want) and p.is_file()
        )
        if not files:
            available = sorted({m.group(2) for p in path.iterdir() if (m := _CN_FILE.match(_strip_gz(p.name)))})
            raise StsFormatError(f"{path}: no <TASK>.{want}.data file (splits here: {', '.join(available) or 'none'})")
        if len(files) > 1:
            raise StsFormatError(f"{path}: several {want!r} files ({', '.join(p.name for p in files)}); pass one")
        path = files[0]
    m = _CN_FILE.match(_strip_gz(path.name))
    task, implied = (m.group(1), m.group(2)) if m else (path.stem, split or "test")
    implied = _check_implied_split(path, implied, split, ("valid", "dev", "validation"))
    rows = []
    for lineno, fields in _tsv_rows(path):
        if len(fields) < 3:
            raise StsFormatError(
                f"{path}:{lineno}: expected sentence1<TAB>sentence2<TAB>label, got {len(fields)} field(s)"
            )
        rows.append((fields[0], fields[1], _float(path, lineno, fields[2].strip(), "label")))
    return _make(path, "cn", CN_TASK_NAMES.get(task, task), implied, rows, None)


# --------------------------------------------------------------------------- pairs


def _pairs_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = Path(_strip_gz(path.name)).suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from iter_json_objects(path)
        return
    if suffix not in (".csv", ".tsv"):
        raise StsFormatError(f"{path}: pairs files must be .csv, .tsv or .jsonl (optionally .gz)")
    rows = iter_table_rows(path, "\t" if suffix == ".tsv" else ",")
    header = next(rows, (1, None))[1]
    if header is None:
        return
    for lineno, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise StsFormatError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
        yield lineno, dict(zip(header, row, strict=False))


def _read_pairs(path: Path, split: str | None, columns: PairColumns) -> StsData:
    if path.is_dir():
        raise StsFormatError(f"{path}: is a directory; the pairs format reads one .csv, .tsv or .jsonl file")
    rows = []
    keys = (columns.sentence1, columns.sentence2, columns.score)
    for lineno, rec in _pairs_records(path):
        missing = [k for k in (*keys, *(("split",) if split else ())) if k not in rec]
        if missing:
            hint = "" if missing[0] == "split" else "; set the column names (--sentence1-column etc.)"
            raise StsFormatError(f"{path}:{lineno}: no field {missing[0]!r}{hint}")
        if split and str(rec["split"]) != split:
            continue
        s1, s2, score = (rec[k] for k in keys)
        if not isinstance(s1, str) or not isinstance(s2, str):
            raise StsFormatError(f"{path}:{lineno}: sentences must be strings")
        if score is None or (isinstance(score, str) and not score.strip()):
            continue  # unscored pair
        if isinstance(score, bool) or not isinstance(score, (str, int, float)):
            raise StsFormatError(f"{path}:{lineno}: score must be a number, got {type(score).__name__}")
        rows.append((s1, s2, _float(path, lineno, str(score).strip())))
    task = _strip_gz(path.name).rsplit(".", 1)[0]
    return _make(path, "pairs", task, split or "all", rows, None)


# --------------------------------------------------------------------------- encoding and scoring


Encoder = TextEncoder | Callable[[list[str]], Any] | str | Path | None
"""What the scorers accept as a model (see :func:`encode_sentences`)."""


def resolve_model(model: Encoder) -> Any:
    """``None``, a model name or a path load the encoder offline; anything else is returned as is."""
    if model is None or isinstance(model, (str, Path)):
        from simtool.encoder import load_encoder

        return load_encoder(model)
    return model


def encode_sentences(model: Encoder, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Encode ``texts`` with ``model``; returns ``(len(texts), d)`` float32.

    ``model`` is a ``SentenceTransformer`` (encoded with ``batch_size``), an object with
    ``encode(list[str]) -> (n, d)`` array-like (numpy or torch), or a callable with the same
    signature.
    """
    from sentence_transformers import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        from simtool.encoder import encode_texts

        return encode_texts(model, texts, batch_size=batch_size, progress=progress)
    if isinstance(model, TextEncoder):
        out = model.encode(texts)
    elif callable(model):
        out = model(texts)
    else:
        raise TypeError(f"cannot encode with a {type(model).__name__}: need .encode(texts) or a callable")
    if hasattr(out, "detach"):  # a torch tensor, possibly on a GPU
        out = out.detach().float().cpu().numpy()
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(texts):
        raise ValueError(f"the encoder returned shape {arr.shape} for {len(texts)} texts, expected (n, d)")
    return arr


def encode_pairs(
    model: Encoder, sentences1: list[str], sentences2: list[str], *, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(n, d)`` of both sides, encoding each distinct sentence once."""
    unique = list(dict.fromkeys([*sentences1, *sentences2]))
    position = {s: i for i, s in enumerate(unique)}
    vectors = encode_sentences(model, unique, batch_size=batch_size, progress=progress)
    return vectors[[position[s] for s in sentences1]], vectors[[position[s] for s in sentences2]]


def evaluate_sts_vectors(
    emb1: np.ndarray,
    emb2: np.ndarray,
    gold: Sequence[float] | np.ndarray,
    subsets: dict[str, range] | None = None,
) -> dict[str, Any]:
    """STS metrics ×100 from precomputed embeddings ``emb1``, ``emb2`` ``(n, d)`` and gold ``(n,)``.

    Keys ``{cosine,euclidean,manhattan,dot}_{spearman,pearson}`` over all pairs. With
    ``subsets`` (name -> index range), also ``subsets`` (name -> ``{"n", metrics...}``),
    ``all`` (the same as the top level: every subset concatenated) and ``wmean`` (each
    metric's per-subset value weighted by subset size).
    """
    gold_arr = np.asarray(gold, dtype=np.float64)
    scores: dict[str, Any] = sts_scores(emb1, emb2, gold_arr)
    if subsets:
        per = {}
        for name, idx in subsets.items():
            sl = slice(idx.start, idx.stop)
            per[name] = {"n": len(idx), **sts_scores(emb1[sl], emb2[sl], gold_arr[sl])}
        total = sum(len(r) for r in subsets.values())
        scores["all"] = dict(scores)
        scores["wmean"] = {
            key: sum(p["n"] * p[key] for p in per.values()) / total for key in scores["all"] if total > 0
        }
        scores["subsets"] = per
    return scores


def evaluate_sts_data(model: Encoder, data: StsData, *, batch_size: int = 64, progress: bool = False) -> EvalResult:
    """Score loaded :class:`StsData` with ``model`` (see :func:`encode_sentences`)."""
    model = resolve_model(model)
    emb1, emb2 = encode_pairs(model, data.sentences1, data.sentences2, batch_size=batch_size, progress=progress)
    scores = evaluate_sts_vectors(emb1, emb2, data.scores, data.subsets or None)
    info: dict[str, Any] = {"format": data.format, "path": str(data.path)}
    if isinstance(model, SentenceEncoder) and encoder_info(model).source is not None:  # from load_encoder: record it
        from simtool.backends import backend_info

        info["encode_backend"] = backend_info(model)
    return EvalResult(
        task=data.task,
        split=data.split,
        n=len(data),
        main_score=scores[MAIN_METRIC],
        scores=scores,
        main_metric=MAIN_METRIC,
        info=info,
    )


def evaluate_sts(
    model: Encoder,
    path: str | Path,
    *,
    format: str = "auto",
    split: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
    columns: PairColumns = PairColumns(),
) -> EvalResult:
    """Read an STS dataset and score ``model`` on it as MTEB does: main score = cosine Spearman ×100.

    ``model``: a ``SentenceTransformer``, anything with ``encode(list[str]) -> (n, d)``, a
    callable of that signature, or ``None``/a name/a path (loaded with ``load_encoder``).
    """
    data = load_sts(path, format, split, columns=columns)
    return evaluate_sts_data(model, data, batch_size=batch_size, progress=progress)
