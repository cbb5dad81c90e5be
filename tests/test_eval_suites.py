"""Named suites over a data root built here (tiny real BERT): discovery, skips, reports, reference deltas."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from simtool.errors import SimtoolError
from simtool.evals.suites import SUITES, TaskSpec, load_reference, reference_score, run_suite, suite_tasks
from tests.conftest import WORDS, shared_data_dir, write_jsonl
from tests.conftest import run_cli as run


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=6))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("data")
    stsb = root / "stsb" / "original"
    stsb.mkdir(parents=True)
    rows = [f"g\tf\t2012\t{i}\t{rng.uniform(0, 5):.2f}\t{_sentence(rng)}\t{_sentence(rng)}" for i in range(30)]
    (stsb / "sts-test.csv").write_text("\n".join(rows) + "\n")
    # A tokenised copy must not be picked instead of the original.
    (root / "stsb" / "senteval_tokenized").mkdir()
    (root / "stsb" / "senteval_tokenized" / "sts-test.csv").write_text("broken\n")
    sts12 = root / "SentEval" / "STS" / "STS12-en-test"
    sts12.mkdir(parents=True)
    (sts12 / "STS.input.MSRpar.txt").write_text("".join(f"{_sentence(rng)}\t{_sentence(rng)}\n" for _ in range(20)))
    (sts12 / "STS.gs.MSRpar.txt").write_text("".join(f"{rng.uniform(0, 5):.2f}\n" for _ in range(20)))
    atec = root / "chinese_sts" / "ATEC"
    atec.mkdir(parents=True)
    (atec / "ATEC.test.data").write_text("".join(f"{_sentence(rng)}\t{_sentence(rng)}\t{i % 2}\n" for i in range(24)))
    for name in ("scifact", "arguana"):
        beir = root / "beir" / name
        (beir / "qrels").mkdir(parents=True)
        docs = [{"_id": f"{name}{i}", "title": "", "text": _sentence(rng)} for i in range(25)]
        write_jsonl(beir / "corpus.jsonl", docs)
        write_jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": docs[i]["text"][:20]} for i in range(8)])
        (beir / "qrels" / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{name}{i}\t1\n" for i in range(8))
        )
    return root


def test_discovery_and_skips(data_root: Path) -> None:
    en = {t.name: t for t in suite_tasks("en-sts", data_root)}
    assert list(en) == ["STSBenchmark", "STS12", "STS13", "STS14", "STS15", "STS16", "SICK-R"]
    assert en["STSBenchmark"].path == data_root / "stsb" / "original" / "sts-test.csv"
    assert en["STS12"].path == data_root / "SentEval" / "STS" / "STS12-en-test"
    assert en["STS13"].path is None and en["SICK-R"].path is None
    zh = {t.name: t.path for t in suite_tasks("zh-sts", data_root)}
    assert list(zh) == ["ATEC", "BQ", "LCQMC", "PAWSX", "STSB"] and zh["ATEC"] is not None and zh["BQ"] is None
    ret = suite_tasks("en-retrieval", data_root)
    assert [(t.name, t.ignore_identical_ids) for t in ret] == [("SciFact", False), ("ArguAna", True)]
    with pytest.raises(SimtoolError, match="unknown suite 'fr-sts'"):
        suite_tasks("fr-sts", data_root)
    with pytest.raises(SimtoolError, match="no such directory"):
        suite_tasks("en-sts", data_root / "nope")


def test_a_suite_is_its_declared_table(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(SUITES) == ["en-sts", "en-retrieval", "zh-sts"]
    sts12 = next(s for s in SUITES["en-sts"] if isinstance(s, TaskSpec) and s.name == "STS12")
    atec = next(s for s in SUITES["zh-sts"] if isinstance(s, TaskSpec) and s.name == "ATEC")
    monkeypatch.setitem(SUITES, "mixed", (atec, replace(sts12, name="STS12-again")))
    got = [(t.name, t.format, t.split, t.main_metric, t.path) for t in suite_tasks("mixed", data_root)]
    assert got == [
        ("ATEC", "cn", "test", "cosine_spearman", data_root / "chinese_sts" / "ATEC" / "ATEC.test.data"),
        ("STS12-again", "senteval", "test", "cosine_spearman", data_root / "SentEval" / "STS" / "STS12-en-test"),
    ]


def test_run_suite_reports_scores_skips_and_deltas(data_root: Path, tiny_st: Path, tmp_path: Path) -> None:
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "STSBenchmark.json").write_text(
        json.dumps({"task_name": "STSBenchmark", "scores": {"test": [{"hf_subset": "default", "main_score": 0.5}]}})
    )
    (ref_dir / "model_meta.json").write_text("{}")
    seen: list[str] = []
    report = run_suite(
        "en-sts", data_root, model=str(tiny_st), reference=ref_dir, on_result=lambda r: seen.append(r.task)
    )
    assert seen == ["STSBenchmark", "STS12"]
    assert [s["task"] for s in report.skipped] == ["STS13", "STS14", "STS15", "STS16", "SICK-R"]
    stsb = report.results[0]
    obj = report.result_json(stsb)
    assert obj["reference"] == 50.0 and obj["delta"] == pytest.approx(stsb.main_score - 50.0)
    assert report.result_json(report.results[1])["delta"] is None  # no STS12 reference
    md = report.to_markdown()
    assert "| task | split | n | metric | score | reference | delta |" in md
    assert (
        f"| STSBenchmark | test | 30 | cosine_spearman | {stsb.main_score:.2f} | 50.00 | {stsb.main_score - 50:+.2f} |"
        in md
    )
    assert "Skipped: STS13" in md
    md_path, json_path = report.write(tmp_path / "out")
    full = json.loads(json_path.read_text())
    assert full["model"]["fingerprint"] == report.model["fingerprint"] and len(full["model"]["fingerprint"]) == 16
    assert {"torch", "sentence-transformers", "faiss-cpu", "python"} <= set(full["versions"])
    assert full["wall_seconds"] > 0 and full["results"][1]["scores"]["subsets"]["MSRpar"]["n"] == 20
    assert md_path.read_text() == md


def test_reference_readers(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"mteb_dataset_name": "SICK-R", "test": {"cos_sim": {"spearman": 0.7}}}))
    assert load_reference(old) == {"SICK-R/test": pytest.approx(70.0)}
    tsv = tmp_path / "scores.tsv"
    tsv.write_text("task\tsplit\tsubset\tmain_metric\tmain_score\nATEC\tvalidation\tdefault\tx\t0.12\n")
    refs = load_reference(tsv)
    assert reference_score(refs, "ATEC", "valid") == pytest.approx(12.0)  # split aliases
    assert reference_score(refs, "ATEC", "test") is None
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SimtoolError, match=r"bad\.json: not an MTEB result file"):
        load_reference(bad)
    with pytest.raises(SimtoolError, match="no such file or directory"):
        load_reference(tmp_path / "missing")


def test_cli_suite_with_the_published_reference(
    capsys: pytest.CaptureFixture[str], data_root: Path, tiny_st: Path, tmp_path: Path
) -> None:
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent")
    reference = shared / "reference" / "all-MiniLM-L6-v2"
    out_dir = tmp_path / "report"
    argv = ["eval", "suite", "en-retrieval", "--data-root", str(data_root), "--model", str(tiny_st)]
    argv += ["--reference", str(reference), "--output-dir", str(out_dir)]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "| SciFact | test | 8 | ndcg_at_10 |" in out and "| 64.51 |" in out  # the published SciFact score
    assert "| ArguAna | test | 8 | ndcg_at_10 |" in out and out.count("| – | – |") == 1  # no ArguAna reference here
    assert (out_dir / "report.md").exists() and (out_dir / "report.json").exists()
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [o["task"] for o in lines] == ["SciFact", "ArguAna"]
    assert lines[0]["reference"] == pytest.approx(64.508) and lines[0]["delta"] == pytest.approx(
        lines[0]["main_score"] - 64.508
    )
    assert {"task", "split", "n", "main_score", "scores"} <= set(lines[0])


def test_cli_suite_bad_input(capsys: pytest.CaptureFixture[str], data_root: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "eval", "suite", "nope", "--data-root", str(data_root), "--json")
    assert code == 2 and out == "" and "unknown suite 'nope'" in err and err.count("\n") == 1
    code, _, err = run(
        capsys, "eval", "suite", "zh-sts", "--data-root", str(data_root), "--reference", str(tmp_path / "x.json")
    )
    assert code == 2 and "--reference" in err and err.count("\n") == 1
