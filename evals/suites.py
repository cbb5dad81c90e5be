"""Named evaluation suites over a data root, with markdown/JSON reports and deltas to MTEB references.

A suite is data: :data:`SUITES` maps its name to a table of :class:`TaskSpec` (one task: name, main
metric, where its data may lie, reader format and split) and :class:`TaskFamily` (every further
dataset of a kind found under the root); :func:`suite_tasks` resolves a table against a data root.

Suites (datasets are looked up under ``data_root``; absent ones are skipped and listed):

``en-sts``
    STSBenchmark (``stsb/original/sts-test.csv`` or the sentence-transformers file), STS12–STS16
    (SentEval directories such as ``STS12-en-test``), SICK-R (``SICK*.txt``, split ``all`` as MTEB).
``en-retrieval``
    SciFact (``beir/scifact``) and every other BEIR folder (``corpus.jsonl``, ``queries.jsonl``,
    ``qrels/test.tsv``) found under the root; ArguAna and Quora ignore identical ids as MTEB does.
``zh-sts``
    ATEC, BQ, LCQMC, PAWSX and STS-B (reported as C-MTEB's ``STSB``), ``<TASK>.test.data``.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simtool.atomic import atomic_open, atomic_write_json
from simtool.corpus import find_data_file
from simtool.errors import SimtoolError
from simtool.protocols import encoder_info

from .result import EvalResult
from .retrieval import MAIN_METRIC as RETRIEVAL_MAIN_METRIC
from .retrieval import beir_task_name, evaluate_retrieval
from .sts import MAIN_METRIC as STS_MAIN_METRIC
from .sts import evaluate_sts

MAX_DEPTH = 4  # how deep below the data root datasets are looked for
IDENTICAL_ID_TASKS = frozenset({"ArguAna", "QuoraRetrieval"})  # MTEB drops hits equal to the query id for these
_SPLIT_ALIASES = {"dev": ("dev", "validation", "valid"), "validation": ("validation", "dev", "valid")}
_SPLIT_ALIASES["valid"] = _SPLIT_ALIASES["validation"]

Finder = Callable[[Path], Path | None]
"""Given one directory, the dataset path in it (a file or the directory itself), or ``None``."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite, declared: its name, how it is scored and where its data may lie.

    ``name`` is what the report shows and the key of its reference score (``name/split``: MTEB's task
    names). The dataset is the first hit of ``find`` on the ``candidates`` (directories relative to the
    data root, in order), else on every directory under the root, breadth first. ``format`` and
    ``split`` go to the reader; ``main_metric`` is the score reported as ``main_score``.
    """

    name: str
    kind: str  # "sts" or "retrieval"
    main_metric: str
    find: Finder
    candidates: tuple[str, ...] = ()
    format: str = "auto"
    split: str = "test"
    ignore_identical_ids: bool = False


@dataclass(frozen=True)
class TaskFamily:
    """Every further dataset under the data root that ``find`` accepts, each a task named by ``name_of``.

    Directories an earlier task of the suite already took are not counted again.
    ``ignore_identical_ids`` names the tasks scored without hits equal to the query id.
    """

    kind: str
    main_metric: str
    find: Finder
    name_of: Callable[[Path], str]
    split: str = "test"
    ignore_identical_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SuiteTask:
    """One dataset of a suite: where it is (``None``: not found) and how to score it."""

    name: str
    kind: str  # "sts" or "retrieval"
    path: Path | None
    format: str = "auto"
    split: str = "test"
    ignore_identical_ids: bool = False
    main_metric: str = field(kw_only=True)


@dataclass
class SuiteReport:
    suite: str
    data_root: str
    model: dict[str, Any]
    results: list[EvalResult] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    references: dict[str, float | None] = field(default_factory=dict)  # "task/split" -> reference ×100
    reference_path: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    wall_seconds: float = 0.0
    created_at: str = ""

    def reference_for(self, result: EvalResult) -> float | None:
        return self.references.get(f"{result.task}/{result.split}")

    def result_json(self, result: EvalResult) -> dict[str, Any]:
        """The standard ``to_json()`` object, plus ``reference`` and ``delta`` when a reference was given."""
        out = result.to_json()
        if self.reference_path is not None:
            ref = self.reference_for(result)
            out["reference"] = ref
            out["delta"] = None if ref is None else result.main_score - ref
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "data_root": self.data_root,
            "model": self.model,
            "reducers": sorted(
                {json.dumps(r, sort_keys=True) for res in self.results for r in res.info.get("reducers", [])}
            ),
            "results": [{**self.result_json(r), "main_metric": r.main_metric, "info": r.info} for r in self.results],
            "skipped": self.skipped,
            "reference_path": self.reference_path,
            "versions": self.versions,
            "wall_seconds": round(self.wall_seconds, 3),
            "created_at": self.created_at,
        }

    def to_markdown(self) -> str:
        """A table: task, split, n, main metric, score, and with a reference the reference and delta."""
        with_ref = self.reference_path is not None
        head = ["task", "split", "n", "metric", "score"] + (["reference", "delta"] if with_ref else [])
        lines = [
            f"# simtool eval suite `{self.suite}`",
            "",
            f"model `{self.model.get('name')}` (fingerprint `{self.model.get('fingerprint')}`), "
            f"data root `{self.data_root}`, {self.wall_seconds:.1f}s",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" if i < 2 or i == 3 else "---:" for i in range(len(head))) + "|",
        ]
        for r in self.results:
            row = [r.task, r.split, str(r.n), r.main_metric, f"{r.main_score:.2f}"]
            if with_ref:
                ref = self.reference_for(r)
                # round first so that a delta of -0.000004 prints as +0.00, not -0.00
                row += ["–", "–"] if ref is None else [f"{ref:.2f}", f"{round(r.main_score - ref, 2) + 0.0:+.2f}"]
            lines.append("| " + " | ".join(row) + " |")
        if self.skipped:
            lines += ["", "Skipped: " + "; ".join(f"{s['task']} ({s['reason']})" for s in self.skipped)]
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        lines += ["", f"Versions: {versions}", ""]
        return "\n".join(lines)

    def write(self, output_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.json`` into ``output_dir`` (each atomically)."""
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / "report.md", out / "report.json"
        with atomic_open(md, "w") as f:
            f.write(self.to_markdown())
        atomic_write_json(js, self.to_json())
        return md, js


# --------------------------------------------------------------------------- locating datasets


def _walk_dirs(root: Path, max_depth: int = MAX_DEPTH) -> Iterator[Path]:
    """``root`` and its subdirectories down to ``max_depth``, breadth first, sorted, hidden ones skipped."""
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            yield d
            try:
                children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            nxt.extend(children)
        level = nxt


def _first(root: Path, candidates: Sequence[str], finder: Finder) -> Path | None:
    for rel in candidates:
        found = finder(root / rel) if (root / rel).is_dir() else None
        if found is not None:
            return found
    for d in _walk_dirs(root):
        found = finder(d)
        if found is not None:
            return found
    return None


def _stsb_finder(d: Path) -> Path | None:
    if "tokenized" in d.name.lower():  # SentEval's lowercased copy scores differently from MTEB's data
        return None
    return find_data_file(d, "sts-test.csv") or find_data_file(d, "stsbenchmark.tsv")


def _senteval_finder(year: int) -> Finder:
    pattern = re.compile(rf"^STS{year}(\b|[-_]|$)", re.IGNORECASE)

    def find(d: Path) -> Path | None:
        if not pattern.match(d.name) or "train" in d.name.lower():
            return None
        prefix = "STS2016.input." if year == 16 else "STS.input."
        return d if any(p.name.startswith(prefix) for p in d.iterdir()) else None

    return find


def _sick_finder(d: Path) -> Path | None:
    return d if find_data_file(d, "SICK.txt") or find_data_file(d, "SICK_test_annotated.txt") else None


def _cn_finder(task: str) -> Finder:
    return lambda d: find_data_file(d, f"{task}.test.data")


def _is_beir(d: Path) -> bool:
    files = (d / "corpus.jsonl", d / "queries.jsonl", d / "qrels" / "test.tsv")
    return all(find_data_file(f.parent, f.name) for f in files)


def _scifact_finder(d: Path) -> Path | None:
    return d if d.name.lower() == "scifact" and _is_beir(d) else None


def _beir_finder(d: Path) -> Path | None:
    return d if _is_beir(d) else None


SUITES: dict[str, tuple[TaskSpec | TaskFamily, ...]] = {
    "en-sts": (
        TaskSpec("STSBenchmark", "sts", STS_MAIN_METRIC, _stsb_finder, ("stsb/original", "stsb", "STSBenchmark")),
        *(
            TaskSpec(
                f"STS{year}", "sts", STS_MAIN_METRIC, _senteval_finder(year), (f"STS/STS{year}-en-test",), "senteval"
            )
            for year in range(12, 17)
        ),
        TaskSpec("SICK-R", "sts", STS_MAIN_METRIC, _sick_finder, ("SICK", "sick"), "sick", "all"),
    ),
    "en-retrieval": (
        TaskSpec("SciFact", "retrieval", RETRIEVAL_MAIN_METRIC, _scifact_finder, ("beir/scifact", "scifact")),
        TaskFamily(
            "retrieval", RETRIEVAL_MAIN_METRIC, _beir_finder, beir_task_name, ignore_identical_ids=IDENTICAL_ID_TASKS
        ),
    ),
    # the data's name (STS-B) differs from C-MTEB's task name (STSB) for one task
    "zh-sts": tuple(
        TaskSpec(name, "sts", STS_MAIN_METRIC, _cn_finder(data), (f"chinese_sts/{data}", data), "cn")
        for data, name in (("ATEC", "ATEC"), ("BQ", "BQ"), ("LCQMC", "LCQMC"), ("PAWSX", "PAWSX"), ("STS-B", "STSB"))
    ),
}
"""Each suite's tasks, in report order."""


def suite_tasks(name: str, data_root: str | Path) -> list[SuiteTask]:
    """The tasks of suite ``name``, each with the dataset path found under ``data_root`` or ``None``."""
    root = Path(data_root)
    if name not in SUITES:
        raise SimtoolError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    if not root.is_dir():
        raise SimtoolError(f"data_root={str(root)!r}: no such directory")
    tasks: list[SuiteTask] = []
    for spec in SUITES[name]:
        if isinstance(spec, TaskSpec):
            path = _first(root, spec.candidates, spec.find)
            tasks.append(
                SuiteTask(
                    spec.name,
                    spec.kind,
                    path,
                    spec.format,
                    spec.split,
                    spec.ignore_identical_ids,
                    main_metric=spec.main_metric,
                )
            )
            continue
        taken = {t.path for t in tasks}
        for d in _walk_dirs(root):
            found = spec.find(d)
            if found is not None and found not in taken:
                task = spec.name_of(found)
                tasks.append(
                    SuiteTask(
                        task,
                        spec.kind,
                        found,
                        split=spec.split,
                        ignore_identical_ids=task in spec.ignore_identical_ids,
                        main_metric=spec.main_metric,
                    )
                )
    return tasks


# --------------------------------------------------------------------------- references


def load_reference(path: str | Path) -> dict[str, float]:
    """MTEB reference main scores ×100 as ``{"Task/split": score}``.

    ``path`` is a directory of MTEB result files (``<Task>.json``), one such file, or a TSV
    with columns ``task``, ``split``, ``main_score`` (fractions, as MTEB's files hold them).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.name != "model_meta.json")
        if not files:
            raise SimtoolError(f"reference={str(path)!r}: no MTEB result .json files in this directory")
        out: dict[str, float] = {}
        for f in files:
            out.update(_read_mteb_json(f))
        return out
    if not path.is_file():
        raise SimtoolError(f"reference={str(path)!r}: no such file or directory")
    if path.suffix.lower() in (".tsv", ".txt"):
        return _read_reference_tsv(path)
    return _read_mteb_json(path)


def _read_mteb_json(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SimtoolError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(data, dict) or not (task := data.get("task_name") or data.get("mteb_dataset_name")):
        raise SimtoolError(f"{path}: not an MTEB result file (no task_name)")
    scores = data.get("scores")
    splits: dict[str, Any] = scores if isinstance(scores, dict) else data  # new or pre-1.11 layout
    out: dict[str, float] = {}
    for split, entry in splits.items():
        entries = entry if isinstance(entry, list) else [entry]
        chosen = next((e for e in entries if isinstance(e, dict) and e.get("hf_subset", "default") == "default"), None)
        if chosen is None:
            continue
        score = chosen.get("main_score")
        if score is None:
            score = (chosen.get("cos_sim") or {}).get("spearman", chosen.get("ndcg_at_10"))
        if isinstance(score, (int, float)):
            out[f"{task}/{split}"] = 100.0 * float(score)
    return out


def _read_reference_tsv(path: Path) -> dict[str, float]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if not lines:
        raise SimtoolError(f"{path}: empty reference file")
    header = lines[0].split("\t")
    if not {"task", "split", "main_score"} <= set(header):
        raise SimtoolError(f"{path}:1: reference TSV needs columns task, split, main_score")
    out = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        row = dict(zip(header, line.split("\t"), strict=False))
        if row.get("subset", "default") != "default":
            continue
        try:
            out[f"{row['task']}/{row['split']}"] = 100.0 * float(row["main_score"])
        except (KeyError, ValueError):
            raise SimtoolError(f"{path}:{lineno}: bad reference row") from None
    return out


def reference_score(references: dict[str, float], task: str, split: str) -> float | None:
    for alias in _SPLIT_ALIASES.get(split, (split,)):
        if f"{task}/{alias}" in references:
            return references[f"{task}/{alias}"]
    return None


# --------------------------------------------------------------------------- running


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "simtool",
        "sentence-transformers",
        "transformers",
        "torch",
        "faiss-cpu",
        "numpy",
        "scipy",
        "scikit-learn",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def run_suite(
    name: str,
    data_root: str | Path,
    *,
    model: Any = None,
    pooling: str | None = None,
    reference: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
    on_result: Callable[[EvalResult], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    backend: str = "torch",
) -> SuiteReport:
    """Run every dataset of suite ``name`` found under ``data_root`` with one encoder.

    ``model``: ``None``/a name/a path (loaded with ``pooling``) or an encoder from
    :func:`simtool.load_encoder`. ``on_result``/``on_skip`` see each task as it finishes.
    ``backend``: the encode backend a named ``model`` is loaded with (a loaded one brings its own).
    """
    from simtool.encoder import describe_pooling, load_encoder, model_fingerprint

    started = time.perf_counter()
    tasks = suite_tasks(name, data_root)
    references = load_reference(reference) if reference is not None else {}
    named = model is None or isinstance(model, (str, Path))
    encoder = load_encoder(model, pooling, backend=backend) if named else model
    report = SuiteReport(
        suite=name,
        data_root=str(Path(data_root).resolve()),
        model={
            "name": encoder_info(encoder).source or str(model),
            "fingerprint": model_fingerprint(encoder),
            "pooling": describe_pooling(encoder),
        },
        reference_path=None if reference is None else str(reference),
        versions=library_versions(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    for task in tasks:
        if task.path is None:
            report.skipped.append({"task": task.name, "reason": f"not found under {data_root}"})
            if on_skip:
                on_skip(task.name, report.skipped[-1]["reason"])
            continue
        t0 = time.perf_counter()
        if task.kind == "sts":
            result = evaluate_sts(
                encoder, task.path, format=task.format, split=task.split, batch_size=batch_size, progress=progress
            )
            result.info["reducers"] = []
        else:
            result = evaluate_retrieval(
                task.path,
                split=task.split,
                model=encoder,
                ignore_identical_ids=task.ignore_identical_ids,
                batch_size=batch_size,
                progress=progress,
            )
        result.task = task.name
        result.main_metric, result.main_score = task.main_metric, result.scores[task.main_metric]
        result.info["seconds"] = round(time.perf_counter() - t0, 3)
        result.info["path"] = str(task.path)
        report.results.append(result)
        report.references[f"{result.task}/{result.split}"] = reference_score(references, result.task, result.split)
        if on_result:
            on_result(result)
    report.wall_seconds = time.perf_counter() - started
    return report


def default_output_dir(suite: str) -> Path:
    """``$SIMTOOL_HOME/evals/<suite>``."""
    from simtool.config import simtool_home

    return simtool_home() / "evals" / suite


__all__ = [
    "SUITES",
    "SuiteReport",
    "SuiteTask",
    "TaskFamily",
    "TaskSpec",
    "default_output_dir",
    "load_reference",
    "reference_score",
    "run_suite",
    "suite_tasks",
]
