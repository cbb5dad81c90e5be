"""The CLI as a user runs it: output formats, and every bad input as one line with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from simtool.manifest import Manifest
from tests.conftest import committed_state, segment_file, write_jsonl
from tests.conftest import run_cli as run


@pytest.fixture
def index_dir(tmp_path: Path, small_corpus: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "idx"
    code, _, err = run(
        capsys, "index", "build", str(small_corpus), "--index-dir", str(out), "--model", str(tiny_st), "--json"
    )
    assert code == 0, err
    return out


def test_build_info_search_json(index_dir: Path, capsys: pytest.CaptureFixture[str], small_corpus: Path) -> None:
    code, out, _ = run(capsys, "index", "info", "--index-dir", str(index_dir), "--json")
    info = json.loads(out)
    assert code == 0 and info["count"] == 40 and info["verified"] is False and info["factory"] == "Flat"
    first = json.loads(small_corpus.read_text().splitlines()[0])
    code, out, err = run(
        capsys, "search", f"{first['title']} {first['text']}", "--index-dir", str(index_dir), "-k", "3", "--json"
    )
    assert code == 0, err
    (line,) = out.splitlines()
    obj = json.loads(line)
    assert set(obj) == {"query", "results", "backend"} and len(obj["results"]) == 3
    top = obj["results"][0]
    assert set(top) == {"rank", "id", "score", "distance", "title", "text", "metadata"}
    assert (top["rank"], top["id"], top["title"], top["text"]) == (1, first["_id"], first["title"], first["text"])
    assert isinstance(top["score"], float)


def test_batch_queries_print_one_object_per_line(
    index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("red cat\n\nbig bus\npython code\n")
    code, out, _ = run(capsys, "search", "--queries", str(queries), "--index-dir", str(index_dir), "-k", "2", "--json")
    objs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [o["query"] for o in objs] == ["red cat", "big bus", "python code"]
    assert all(len(o["results"]) == 2 for o in objs)


def test_human_output_is_a_ranked_table(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "search", "red [bold]cat[/bold]", "--index-dir", str(index_dir), "-k", "2")
    assert code == 0 and "query: red [bold]cat[/bold]" in out and "score" in out  # markup is not interpreted


def test_default_index_dir_comes_from_simtool_home(
    tmp_path: Path,
    small_corpus: Path,
    tiny_st: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIMTOOL_HOME", str(tmp_path / "home"))
    assert run(capsys, "index", "build", str(small_corpus), "--model", str(tiny_st), "--json")[0] == 0
    assert (tmp_path / "home" / "index" / "manifest.json").exists()
    code, out, _ = run(capsys, "search", "red cat", "--json")
    assert code == 0 and len(json.loads(out)["results"]) == 10


def test_add_then_search(index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    more = write_jsonl(tmp_path / "more.jsonl", [{"_id": "n1", "text": "a horse can swim"}])
    code, out, _ = run(capsys, "index", "add", str(more), "--index-dir", str(index_dir), "--json")
    report = json.loads(out)
    assert code == 0 and {k: report[k] for k in ("added", "skipped", "count", "replaced")} == {
        "added": 1,
        "skipped": 0,
        "count": 41,
        "replaced": 0,
    }
    code, out, _ = run(capsys, "search", "a horse can swim", "--index-dir", str(index_dir), "-k", "1", "--json")
    assert json.loads(out)["results"][0]["id"] == "n1"


def test_encode_writes_float32_and_ids(tmp_path: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "texts.tsv"
    src.write_text("key\tbody\nk1\tthe cat\nk2\tthe dog\n")
    out = tmp_path / "out" / "emb.npy"
    code, stdout, _ = run(
        capsys,
        "encode",
        str(src),
        "--output",
        str(out),
        "--model",
        str(tiny_st),
        "--text-column",
        "body",
        "--id-column",
        "key",
        "--json",
    )
    result = json.loads(stdout)
    arr = np.load(out)
    assert code == 0 and arr.dtype == np.float32 and arr.shape == (2, 32) == (result["n"], result["dim"])
    assert json.loads((tmp_path / "out" / "emb.ids.json").read_text()) == ["k1", "k2"]


def _one_line_error(code: int, out: str, err: str, pattern: str) -> None:
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simtool: error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]


BAD_CORPORA = {
    "empty.jsonl": (b"", r"empty\.jsonl: corpus is empty"),
    "malformed.jsonl": (b'{"_id": "a", "text": "x"}\n{oops\n', r"malformed\.jsonl:2: malformed JSON"),
    "notext.jsonl": (b'{"_id": "a", "body": "x"}\n', r"notext\.jsonl:1: missing 'text' field"),
    "dups.jsonl": (b'{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', r"dups\.jsonl:2: duplicate id 'a'"),
    "latin1.txt": ("caf\u00e9\n".encode("latin-1"), r"latin1\.txt:1: not valid UTF-8"),
}


@pytest.mark.parametrize("name", sorted(BAD_CORPORA))
@pytest.mark.parametrize("command", ["build", "add", "encode"])
def test_bad_corpus_is_one_line_exit_2_and_writes_nothing(
    name: str, command: str, index_dir: Path, tmp_path: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, pattern = BAD_CORPORA[name]
    corpus = tmp_path / name
    corpus.write_bytes(content)
    before = committed_state(index_dir)
    if command == "encode":
        args = ["encode", str(corpus), "--output", str(tmp_path / "e.npy"), "--model", str(tiny_st)]
    else:
        args = ["index", command, str(corpus), "--index-dir", str(index_dir), "--model", str(tiny_st)]
    _one_line_error(*run(capsys, *args), pattern)
    assert committed_state(index_dir) == before
    assert not (tmp_path / "e.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(
        *run(capsys, "index", "build", str(tmp_path / "nope.jsonl"), "--index-dir", str(tmp_path / "i")),
        r"nope\.jsonl: no such file",
    )
    assert not (tmp_path / "i").exists()


def test_bad_search_and_index_arguments(
    index_dir: Path, tmp_path: Path, small_corpus: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _one_line_error(*run(capsys, "search", "cat", "--index-dir", str(index_dir), "-k", "0"), r"-k must be positive")
    _one_line_error(*run(capsys, "search", "cat", "--index-dir", str(index_dir), "-k", "-3"), r"-k must be positive")
    _one_line_error(*run(capsys, "search", "cat", "--index-dir", str(tmp_path / "none")), r"none: no index here")
    _one_line_error(*run(capsys, "index", "info", "--index-dir", str(tmp_path / "none")), r"no index here")
    _one_line_error(*run(capsys, "search", "--index-dir", str(index_dir)), r"either a QUERY argument or --queries")
    _one_line_error(
        *run(
            capsys,
            "index",
            "build",
            str(small_corpus),
            "--index-dir",
            str(tmp_path / "f"),
            "--model",
            str(tiny_st),
            "--factory",
            "IVFX,Nope",
        ),
        r"--factory IVFX,Nope is unknown or invalid",
    )
    _one_line_error(
        *run(
            capsys,
            "index",
            "build",
            str(small_corpus),
            "--index-dir",
            str(tmp_path / "f"),
            "--model",
            str(tmp_path / "no-model"),
        ),
        r"does not exist",
    )
    _one_line_error(
        *run(capsys, "index", "build", str(small_corpus), "--index-dir", str(tmp_path / "f"), "--metric", "cosine"),
        r"--metric must be one of ip, l2",
    )
    _one_line_error(
        *run(capsys, "search", "cat", "--index-dir", str(index_dir), "--nprobe", "0"), r"--nprobe must be positive"
    )
    _one_line_error(*run(capsys, "index", "frobnicate"), r"No such command")
    assert not (tmp_path / "f").exists()


def test_corrupted_and_foreign_indexes(index_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(index_dir, corrupt)
    faiss_file = segment_file(corrupt, "index.faiss")
    with open(faiss_file, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    # a flipped byte is found by `index verify`, which hashes every file and names the bad one
    _one_line_error(*run(capsys, "index", "verify", "--index-dir", str(corrupt)), r"index\.faiss: checksum mismatch")
    # a truncated file is caught by the cheap checks of a plain open
    os.truncate(faiss_file, faiss_file.stat().st_size // 2)
    _one_line_error(*run(capsys, "search", "cat", "--index-dir", str(corrupt)), r"index\.faiss: \d+ bytes, .*truncated")
    from tests.conftest import make_tiny_bert

    foreign = tmp_path / "foreign"
    shutil.copytree(index_dir, foreign)
    m = Manifest.load(foreign)
    m.model.name_or_path = str(make_tiny_bert(tmp_path / "other-bert", seed=1))
    m.save(foreign)
    _one_line_error(*run(capsys, "search", "cat", "--index-dir", str(foreign)), r"built by model .*fingerprint")
    m.model.name_or_path = str(make_tiny_bert(tmp_path / "wide-bert", hidden=48))
    m.save(foreign)
    _one_line_error(*run(capsys, "search", "cat", "--index-dir", str(foreign)), r"32-dim vectors .* gives 48")


@pytest.mark.slow
def test_console_script_runs_as_installed(index_dir: Path) -> None:
    """The `simtool` entry point itself, in a fresh process."""
    exe = Path(sys.executable).with_name("simtool")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "simtool"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run(
        [*cmd, "search", "red cat", "--index-dir", str(index_dir), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0 and len(json.loads(ok.stdout)["results"]) == 10
    bad = subprocess.run(
        [*cmd, "search", "cat", "--index-dir", str(index_dir), "-k", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "simtool: error: -k must be positive, got 0"


def test_reserved_stdout_holds_only_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    """While a Ray command runs, a thread that prints to ``sys.stdout`` (as Ray's driver does with raylet
    notices) reaches stderr, and the --json report stays the only thing on stdout."""
    from simtool.cli.common import emit, release_stdout, reserve_stdout

    reserve_stdout()
    try:
        notice = threading.Thread(target=lambda: print("(raylet) A worker died or was killed"))
        notice.start()
        notice.join()
        emit({"n": 1})
    finally:
        release_stdout()
    out, err = capsys.readouterr()
    assert out == '{"n": 1}\n' and "(raylet) A worker died" in err
    print("after")
    assert capsys.readouterr().out == "after\n"
