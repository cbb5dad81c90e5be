"""simtool.devsplit: the classifier finds the test-like rows, formats survive byte for byte, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from simtool.devsplit import like_split, read_rows, row_embeddings, split_like_files
from simtool.errors import SimtoolError
from tests.conftest import WORDS, run_cli


def test_like_split_picks_the_rows_drawn_like_test() -> None:
    rng = np.random.default_rng(0)
    d = 8
    shift = np.zeros(d)
    shift[0] = 3.0
    train = rng.standard_normal((600, d))
    planted = rng.choice(600, 50, replace=False)
    train[planted] += shift  # 50 train rows come from the test distribution
    test = rng.standard_normal((300, d)) + shift
    result = like_split(train, test, 50)
    # the Bayes-optimal pick here is the 50 largest x[:, 0]; the classifier should nearly match it
    oracle = set(np.argsort(-train[:, 0])[:50].tolist()) & set(planted.tolist())
    assert len(set(result.dev.tolist()) & set(planted.tolist())) >= len(oracle) - 4 >= 35
    assert sorted([*result.dev, *result.train]) == list(range(600))
    assert result.auc > 0.8
    same = like_split(rng.standard_normal((300, d)), rng.standard_normal((300, d)), 10)
    assert abs(same.auc - 0.5) < 0.1  # indistinguishable sets


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"dev_size": 0}, "dev_size must be between 1 and 99"), ({"dev_size": 100}, "dev_size must be between")],
)
def test_like_split_bad_sizes(kwargs: dict, message: str) -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(SimtoolError, match=message):
        like_split(rng.standard_normal((100, 3)), rng.standard_normal((50, 3)), **kwargs)
    with pytest.raises(SimtoolError, match="differ in dimension: 3 and 4"):
        like_split(rng.standard_normal((100, 3)), rng.standard_normal((50, 4)), 5)


def _embed(texts: list[str]) -> np.ndarray:
    """A bag-of-words embedding: enough for a classifier to separate vocabularies."""
    index = {w: i for i, w in enumerate(WORDS)}
    out = np.zeros((len(texts), len(WORDS)), dtype=np.float32)
    for r, t in enumerate(texts):
        for w in t.split():
            if w in index:
                out[r, index[w]] += 1
    return out


def _write_sts_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    # headerless STS-B layout with a bare quote, which a quoting TSV reader would mangle
    path.write_bytes(
        b"".join(
            f'main-captions\tMSRvid\t2012test\t{i:04d}\t3.5\t{a} "q\t{b}\n'.encode() for i, (a, b) in enumerate(rows)
        )
    )


def test_sts_pairs_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    animals, code = WORDS[26:36], WORDS[84:]
    train_rows = [(" ".join(rng.choice(animals, 4)), " ".join(rng.choice(animals, 4))) for _ in range(80)]
    like_test = [(" ".join(rng.choice(code, 4)), " ".join(rng.choice(code, 4))) for _ in range(10)]
    train_rows[5:15] = like_test
    _write_sts_tsv(tmp_path / "train.tsv", train_rows)
    _write_sts_tsv(tmp_path / "test.tsv", [(" ".join(rng.choice(code, 4)), "x") for _ in range(40)])
    result, rows = split_like_files(tmp_path / "train.tsv", tmp_path / "test.tsv", 10, tmp_path / "out", _embed)
    assert rows.layout == "stsb-original" and rows.texts[0][0].endswith('"q')
    assert len(set(result.dev.tolist()) & set(range(5, 15))) >= 9
    src = (tmp_path / "train.tsv").read_bytes().splitlines(keepends=True)
    dev = set(result.dev.tolist())
    assert (tmp_path / "out/dev.tsv").read_bytes() == b"".join(src[i] for i in sorted(dev))
    assert (tmp_path / "out/train.tsv").read_bytes() == b"".join(src[i] for i in range(80) if i not in dev)


def test_csv_header_jsonl_and_gzip_keep_their_format(tmp_path: Path) -> None:
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("sent0,sent1,hard_neg\n" + "".join(f'"{w}, a",{w} b,{w} c\n' for w in WORDS[:30]))
    rows = read_rows(csv_path)
    assert rows.header == b"sent0,sent1,hard_neg\n" and rows.texts[0] == ["the, a", "the b", "the c"]
    jl = tmp_path / "corpus.jsonl.gz"
    with gzip.open(jl, "wt") as f:
        f.writelines(
            json.dumps({"_id": str(i), "title": w, "text": f"{w} text"}) + "\n" for i, w in enumerate(WORDS[:30])
        )
    jrows = read_rows(jl)
    assert jrows.layout == "jsonl:title,text" and len(jrows) == 30
    emb = row_embeddings(rows, _embed)
    assert emb.shape == (30, len(WORDS))
    assert np.allclose(emb[0], _embed(["the, a", "the b", "the c"]).mean(0))
    split_like_files(jl, csv_path, 5, tmp_path / "out", _embed)
    dev = gzip.decompress((tmp_path / "out/dev.jsonl.gz").read_bytes()).splitlines()
    train = gzip.decompress((tmp_path / "out/train.jsonl.gz").read_bytes()).splitlines()
    assert len(dev) == 5 and len(train) == 25 and all(json.loads(x)["_id"] for x in dev)


def test_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SimtoolError, match="holds no rows"):
        read_rows(empty)
    with pytest.raises(SimtoolError, match="no such file"):
        read_rows(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(SimtoolError, match=r"bad.jsonl:2: not JSON"):
        read_rows(bad)
    header_only = tmp_path / "h.csv"
    header_only.write_text("sentence1,sentence2\n")
    with pytest.raises(SimtoolError, match="header and no rows"):
        read_rows(header_only)
    nofields = tmp_path / "n.csv"
    nofields.write_text("a,b\n1,2\n")
    with pytest.raises(SimtoolError, match="no text fields"):
        read_rows(nofields)


@pytest.mark.timeout(120)
def test_cli_with_a_tiny_model(tmp_path: Path, tiny_st: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text("".join(f"{WORDS[i % 30]} {WORDS[(i * 7) % 30]}\n" for i in range(60)))
    test.write_text("".join(f"{WORDS[84 + i % 15]} code\n" for i in range(20)))
    args = [
        "split",
        str(train),
        "--like",
        str(test),
        "--dev-size",
        "6",
        "-o",
        str(tmp_path / "out"),
        "--model",
        str(tiny_st),
    ]
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["dev_rows"] == 6 and "cross-validated" in info["auc_kind"]
    got = sorted(
        (tmp_path / "out/dev.txt").read_bytes().splitlines() + (tmp_path / "out/train.txt").read_bytes().splitlines()
    )
    assert got == sorted(train.read_bytes().splitlines())
    code, out, err = run_cli(capsys, *args[:5], "600", *args[6:])
    assert code == 2 and "--dev-size must be between 1 and 59" in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.timeout(300)
def test_stsb_split_with_the_default_model(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real STS-B files (tab-separated .csv, bare quotes) and the default model: lines come back unchanged."""
    src = shared_data / "stsb" / "original"
    train, test = tmp_path / "sts-train.csv", tmp_path / "sts-test.csv"
    train_lines = (src / "sts-train.csv").read_bytes().splitlines(keepends=True)
    train.write_bytes(b"".join(train_lines[:100] + train_lines[3000:3100]))  # 100 captions, 100 news
    test.write_bytes(b"".join((src / "sts-test.csv").read_bytes().splitlines(keepends=True)[-100:]))  # news
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "split", str(train), "--like", str(test), "--dev-size", "30", "-o", str(out), "--json"
    )
    assert code == 0, err
    info = json.loads(stdout)
    assert info["layout"] == "stsb-original" and info["auc"] > 0.6
    lines = train.read_bytes().splitlines(keepends=True)
    dev, rest = (out / "dev.csv").read_bytes(), (out / "train.csv").read_bytes()
    assert sorted(dev.splitlines(keepends=True) + rest.splitlines(keepends=True)) == sorted(lines)
    assert len(dev.splitlines()) == 30
    assert sum(line.startswith(b"main-news") for line in dev.splitlines()) >= 25  # the test-like half
