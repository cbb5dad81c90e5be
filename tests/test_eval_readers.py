"""STS and BEIR readers on small fixture files written here: trailing fields, empty gold lines, 2016 names, BOM, gz."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from simtool.corpus import iter_lines
from simtool.errors import SimtoolError
from simtool.evals.readers import READERS, STS_FORMATS, PairColumns, StsData, StsReader, detect_sts_format, load_sts
from simtool.evals.readers.base import make_data
from simtool.evals.retrieval import load_beir, read_qrels


def write(path: Path, text: str, *, bom: bool = False, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (("\ufeff" if bom else "") + text).encode("utf-8")
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


STSB_ROWS = (
    'main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is "taking" off.\n'
    "main-news\theadlines\t2013\t0002\t1.500\tA man plays.\tA dog runs.\textra\ttrailing\n"
    "main-forum\tdeft\t2014\t0003\t0.000\tOne.\tTwo.\n"
)


# --------------------------------------------------------------------------- stsb


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_stsb_original_fields_4_5_6_with_trailing_fields(tmp_path: Path, bom: bool, gz: bool) -> None:
    path = write(tmp_path / "sts-test.csv", STSB_ROWS, bom=bom, gz=gz)
    data = load_sts(path)
    assert (data.format, data.task, data.split, len(data)) == ("stsb", "STSBenchmark", "test", 3)
    assert data.sentences1 == ["A plane is taking off.", "A man plays.", "One."]
    assert data.sentences2[0] == 'An air plane is "taking" off.'  # QUOTE_NONE: quotes are text
    assert data.sentences2[1] == "A dog runs."  # not "extra"
    np.testing.assert_array_equal(data.scores, [5.0, 1.5, 0.0])


def test_stsb_directory_picks_the_split_file(tmp_path: Path) -> None:
    write(tmp_path / "sts-dev.csv", STSB_ROWS.splitlines(keepends=True)[0])
    write(tmp_path / "sts-test.csv", STSB_ROWS)
    assert detect_sts_format(tmp_path) == "stsb"
    assert len(load_sts(tmp_path)) == 3
    dev = load_sts(tmp_path, split="validation")
    assert (len(dev), dev.split) == (1, "dev")
    with pytest.raises(SimtoolError, match=r"sts-train\.csv"):
        load_sts(tmp_path, split="train")


def test_stsb_file_with_the_wrong_split_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "sts-test.csv", STSB_ROWS)
    with pytest.raises(SimtoolError, match=r"sts-test\.csv: this file holds the 'test' split, not 'dev'"):
        load_sts(path, split="dev")


def test_stsb_short_row_and_bad_score_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "sts-test.csv", STSB_ROWS + "a\tb\tc\n")
    with pytest.raises(SimtoolError, match=r"sts-test\.csv:4: expected at least 7"):
        load_sts(path)
    path = write(tmp_path / "sts-dev.csv", "g\tf\ty\t1\tfive\ts1\ts2\n")
    with pytest.raises(SimtoolError, match=r"sts-dev\.csv:1: score 'five' is not a number"):
        load_sts(path)


@pytest.mark.parametrize("bom", [False, True])
def test_stsb_sbert_layout_has_a_split_column(tmp_path: Path, bom: bool) -> None:
    text = (
        "split\tgenre\tdataset\tyear\tsid\tscore\tsentence1\tsentence2\n"
        "train\tg\td\t2012\t1\t4.0\ttrain one\ttrain two\n"
        "test\tg\td\t2012\t2\t2.5\ttest one\ttest two\n"
        "dev\tg\td\t2012\t3\t1.0\tdev one\tdev two\n"
    )
    path = write(tmp_path / "stsbenchmark.tsv", text, bom=bom, gz=True)
    data = load_sts(path)
    assert (data.sentences1, data.scores.tolist(), data.split) == (["test one"], [2.5], "test")
    assert load_sts(tmp_path, "stsb", "dev").sentences2 == ["dev two"]
    with pytest.raises(
        SimtoolError, match=r"stsbenchmark\.tsv\.gz: no rows with split 'nope' \(splits: dev, test, train\)"
    ):
        load_sts(path, split="nope")


# --------------------------------------------------------------------------- senteval


def _senteval_dir(root: Path, *, year2016: bool = False, gz: bool = False, bom: bool = False) -> Path:
    prefix = "STS2016" if year2016 else "STS"
    d = root / ("STS16-en-test" if year2016 else "STS12-en-test")
    write(d / f"{prefix}.input.news.txt", "a b\tc d\textra column\ne f\tg h\ni j\tk l\n", bom=bom, gz=gz)
    write(d / f"{prefix}.gs.news.txt", "4.0\n\n1.5\n", bom=bom, gz=gz)  # pair 2 is unscored
    write(d / f"{prefix}.input.forum.txt", "m\tn\no\tp\nq\tr\n", gz=gz)
    write(d / f"{prefix}.gs.forum.txt", "0\n5\n2\n", gz=gz)
    write(d / "LICENSE.txt", "not data\n")
    return d


@pytest.mark.parametrize(("year2016", "gz", "bom"), [(False, False, False), (True, False, True), (False, True, True)])
def test_senteval_subsets_skip_unscored_pairs(tmp_path: Path, year2016: bool, gz: bool, bom: bool) -> None:
    d = _senteval_dir(tmp_path, year2016=year2016, gz=gz, bom=bom)
    assert detect_sts_format(d) == "senteval"
    data = load_sts(d)
    assert data.task == ("STS16" if year2016 else "STS12")
    assert (data.format, data.split, len(data)) == ("senteval", "test", 5)
    assert list(data.subsets) == ["forum", "news"]
    news = data.subsets["news"]
    assert [data.sentences1[i] for i in news] == ["a b", "i j"]
    assert [data.sentences2[i] for i in news] == ["c d", "k l"]  # "extra column" dropped
    assert data.scores[news.start : news.stop].tolist() == [4.0, 1.5]
    assert data.scores[data.subsets["forum"].start] == 0.0


def test_senteval_line_count_mismatch_names_the_gold_file(tmp_path: Path) -> None:
    d = _senteval_dir(tmp_path)
    write(d / "STS.gs.forum.txt", "0\n5\n")
    with pytest.raises(SimtoolError, match=r"STS\.gs\.forum\.txt: 2 lines, but STS\.input\.forum\.txt has 3"):
        load_sts(d)


def test_senteval_missing_gold_file_and_bad_gold(tmp_path: Path) -> None:
    d = _senteval_dir(tmp_path)
    (d / "STS.gs.forum.txt").unlink()
    with pytest.raises(SimtoolError, match=r"STS\.input\.forum\.txt: no gold file STS\.gs\.forum\.txt"):
        load_sts(d)
    write(d / "STS.gs.forum.txt", "0\nhigh\n2\n")
    with pytest.raises(SimtoolError, match=r"STS\.gs\.forum\.txt:2: gold score 'high'"):
        load_sts(d)


def test_senteval_single_input_file(tmp_path: Path) -> None:
    d = _senteval_dir(tmp_path)
    data = load_sts(d / "STS.input.news.txt")
    assert list(data.subsets) == ["news"] and len(data) == 2


# --------------------------------------------------------------------------- sick

SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"


def _sick_split_files(d: Path) -> None:
    write(d / "SICK_train.txt", SICK_HEADER + "1\ttr a\ttr b\t4.5\tENTAILMENT\textra\n2\ttr c\ttr d\t1.0\tNEUTRAL\n")
    write(d / "SICK_trial.txt", SICK_HEADER + "3\ttl a\ttl b\t3.2\tNEUTRAL\n", bom=True)
    write(d / "SICK_test_annotated.txt", SICK_HEADER + "4\tte a\tte b\t2.0\tNEUTRAL\n", gz=True)


def test_sick_split_files_and_all(tmp_path: Path) -> None:
    _sick_split_files(tmp_path)
    assert detect_sts_format(tmp_path) == "sick"
    all_ = load_sts(tmp_path)
    assert (all_.task, all_.split, len(all_)) == ("SICK-R", "all", 4)
    assert all_.scores.tolist() == [4.5, 1.0, 3.2, 2.0]
    test = load_sts(tmp_path, split="test")
    assert (test.sentences1, test.sentences2) == (["te a"], ["te b"])
    assert load_sts(tmp_path, split="dev").sentences1 == ["tl a"]  # dev = trial
    train = load_sts(tmp_path / "SICK_train.txt")
    assert (train.split, len(train)) == ("train", 2)
    with pytest.raises(SimtoolError, match=r"SICK_train\.txt: this file holds the 'train' split, not 'test'"):
        load_sts(tmp_path / "SICK_train.txt", split="test")


def test_sick_full_file_filters_on_semeval_set(tmp_path: Path) -> None:
    header = "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\n"
    rows = "1\ta\tb\tNEUTRAL\t1.0\tTRAIN\n2\tc\td\tNEUTRAL\t2.0\tTRIAL\n3\te\tf\tNEUTRAL\t3.0\tTEST\n"
    write(tmp_path / "SICK.txt", header + rows)
    assert load_sts(tmp_path / "SICK.txt").scores.tolist() == [1.0, 2.0, 3.0]
    assert load_sts(tmp_path, split="test").sentences1 == ["e"]
    assert load_sts(tmp_path, split="trial").sentences1 == ["c"]
    with pytest.raises(SimtoolError, match="SICK split must be train, trial, test or all"):
        load_sts(tmp_path, split="validation2")


def test_sick_missing_split_file_and_missing_column(tmp_path: Path) -> None:
    write(tmp_path / "SICK_train.txt", SICK_HEADER + "1\ta\tb\t4.5\tNEUTRAL\n")
    with pytest.raises(SimtoolError, match=r"no SICK_trial\.txt \(nor SICK\.txt\) for split 'trial'"):
        load_sts(tmp_path)
    write(tmp_path / "SICK_test.txt", "pair_ID\tsentence_A\tsentence_B\n1\ta\tb\n")
    with pytest.raises(SimtoolError, match=r"SICK_test\.txt:1: header has no column 'relatedness_score'"):
        load_sts(tmp_path, split="test")


# --------------------------------------------------------------------------- cn


@pytest.mark.parametrize(("gz", "bom"), [(False, False), (True, True)])
def test_cn_task_split_files(tmp_path: Path, gz: bool, bom: bool) -> None:
    d = tmp_path / "STS-B"
    write(d / "STS-B.test.data", "你好\t您好\t5\n\n天气\t下雨\t1\textra\n", gz=gz, bom=bom)
    write(d / "STS-B.valid.data", "一\t二\t0\n")
    data = load_sts(d)
    assert (data.format, data.task, data.split) == ("cn", "STSB", "test")
    assert (data.sentences1, data.sentences2, data.scores.tolist()) == (["你好", "天气"], ["您好", "下雨"], [5.0, 1.0])
    assert load_sts(d, split="validation").split == "valid"
    direct = load_sts(d / "STS-B.valid.data")
    assert (direct.task, direct.split, len(direct)) == ("STSB", "valid", 1)
    with pytest.raises(SimtoolError, match=r"no <TASK>\.train\.data file \(splits here: test, valid\)"):
        load_sts(d, split="train")
    with pytest.raises(SimtoolError, match=r"ATEC\.test\.data:2: expected sentence1<TAB>sentence2<TAB>label"):
        load_sts(write(tmp_path / "ATEC.test.data", "a\tb\t1\nbroken line\n"))


# --------------------------------------------------------------------------- pairs


def test_pairs_csv_tsv_jsonl(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "p.csv", 'sentence1,sentence2,score,note\n"a, b",c,1.5,x\nd,e,,unscored\nf,g,3,y\n')
    data = load_sts(csv_path)
    assert (data.format, data.task, data.sentences1, data.scores.tolist()) == ("pairs", "p", ["a, b", "f"], [1.5, 3.0])
    tsv_path = write(tmp_path / "q.tsv", 'left\tright\tgold\n"quoted\tx\t2\n', bom=True, gz=True)
    data = load_sts(tsv_path, columns=PairColumns("left", "right", "gold"))
    assert (data.sentences1, data.sentences2) == (['"quoted'], ["x"])
    jsonl = write(
        tmp_path / "r.jsonl",
        '{"sentence1": "a", "sentence2": "b", "score": 2, "split": "test"}\n\n'
        '{"sentence1": "c", "sentence2": "d", "score": 4, "split": "train"}\n',
    )
    assert load_sts(jsonl, split="train").sentences1 == ["c"]
    assert len(load_sts(jsonl)) == 2


def test_pairs_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "s1,s2,score\na,b,1\n")
    with pytest.raises(SimtoolError, match=r"p\.csv:2: no field 'sentence1'; set the column names"):
        load_sts(path)
    with pytest.raises(SimtoolError, match=r"p\.jsonl:1: malformed JSON"):
        load_sts(write(tmp_path / "p.jsonl", "{nope\n"))


# --------------------------------------------------------------------------- detection and generic errors


def test_unknown_format_and_undetectable_paths(tmp_path: Path) -> None:
    with pytest.raises(SimtoolError, match="unknown STS format 'xml'"):
        load_sts(write(tmp_path / "sts-test.csv", STSB_ROWS), format="xml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimtoolError, match=r"empty: cannot tell the STS format of this directory; pass --format"):
        load_sts(tmp_path / "empty")
    with pytest.raises(SimtoolError, match=r"data\.bin: cannot tell the STS format"):
        load_sts(write(tmp_path / "data.bin", "x"))
    with pytest.raises(SimtoolError, match=r"nothing-here: no such file or directory"):
        load_sts(tmp_path / "nothing-here")


def test_a_format_is_one_registered_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert STS_FORMATS == ("stsb", "senteval", "sick", "cn", "pairs")  # also auto-detection's order

    def read(path: Path, split: str | None, columns: PairColumns) -> StsData:
        rows = [tuple(line.split("|")) for _, line in iter_lines(path)]
        return make_data(path, "bar", "Bar", split or "test", [(a, b, float(s)) for a, b, s in rows], None)

    monkeypatch.setitem(READERS, "bar", StsReader("bar", lambda name, in_dir: name.endswith(".bar"), read))
    path = write(tmp_path / "x.bar", "a|b|1.5\nc|d|2\n")
    assert detect_sts_format(path) == "bar" and detect_sts_format(tmp_path) == "bar"
    data = load_sts(path)
    assert (data.format, data.task, len(data), data.scores.tolist()) == ("bar", "Bar", 2, [1.5, 2.0])


def test_wrong_explicit_format_is_a_one_line_error(tmp_path: Path) -> None:
    path = write(tmp_path / "sts-test.csv", STSB_ROWS)
    with pytest.raises(SimtoolError, match=r"sts-test\.csv:1: label '2012test' is not a number") as e:
        load_sts(path, format="cn")  # the third field of an STS-B row is its year
    assert "\n" not in str(e.value)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "sts-test.csv"
    path.write_bytes(STSB_ROWS.encode() + b"g\tf\ty\t1\t2.0\t\xff\ts2\n")
    with pytest.raises(SimtoolError, match=r"sts-test\.csv:4: not valid UTF-8"):
        load_sts(path)


# --------------------------------------------------------------------------- BEIR


def _beir(root: Path, *, qrels_header: bool = True, gz: bool = False) -> Path:
    write(root / "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "x"}\n', gz=gz)
    write(root / "queries.jsonl", '{"_id": "q1", "text": "query one"}\n{"_id": "q2", "text": "query two"}\n', bom=True)
    header = "query-id\tcorpus-id\tscore\n" if qrels_header else ""
    write(root / "qrels" / "test.tsv", header + "q1\td1\t1\nq1\td2\t2\nq2\td1\t0\n", gz=gz)
    return root


@pytest.mark.parametrize(("header", "gz"), [(True, False), (False, True)])
def test_beir_reader(tmp_path: Path, header: bool, gz: bool) -> None:
    data = load_beir(_beir(tmp_path / "scifact", qrels_header=header, gz=gz))
    assert (data.task, data.split) == ("SciFact", "test")
    assert data.queries == {"q1": "query one", "q2": "query two"}
    assert data.qrels == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}
    assert data.corpus_path.name == ("corpus.jsonl.gz" if gz else "corpus.jsonl")


def test_beir_errors_name_the_file(tmp_path: Path) -> None:
    root = _beir(tmp_path / "mine")
    with pytest.raises(SimtoolError, match=r"qrels/dev\.tsv: no such qrels file \(splits here: test\)"):
        load_beir(root, "dev")
    write(root / "qrels" / "bad.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(SimtoolError, match=r"bad\.tsv:2: relevance 'high' is not an integer"):
        read_qrels(root / "qrels" / "bad.tsv")
    (root / "queries.jsonl").unlink()
    with pytest.raises(SimtoolError, match=r"mine: no queries\.jsonl"):
        load_beir(root)
