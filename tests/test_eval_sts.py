"""STS scoring with a tiny real BERT, the accepted encoder kinds, and `simtool eval sts` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from sentence_transformers import SentenceTransformer
from sklearn.metrics.pairwise import paired_cosine_distances

from simtool.encoder import encode_pairs, load_encoder
from simtool.errors import ParameterError
from simtool.evals.readers import load_sts
from simtool.evals.result import EvalResult
from simtool.evals.sts import evaluate_sts
from tests.conftest import WORDS
from tests.conftest import run_cli as run


@pytest.fixture(scope="module")
def stsb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 STS-B-style rows; some sentences repeat across rows."""
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(WORDS, size=6)) for _ in range(30)]
    lines = []
    for i in range(40):
        a, b = sentences[i % 30], sentences[(i * 7 + 3) % 30]
        lines.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{a}\t{b}")
    path = tmp_path_factory.mktemp("stsb") / "sts-test.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_st: Path) -> SentenceTransformer:
    return load_encoder(tiny_st, device="cpu")


def test_scores_equal_mteb_recipe_on_separately_encoded_sides(tiny_model, stsb_file: Path) -> None:
    result = evaluate_sts(tiny_model, stsb_file)
    data = load_sts(stsb_file)
    # MTEB: encode each side, 1 - paired cosine distance, scipy Spearman.
    e1 = tiny_model.encode(data.sentences1, convert_to_numpy=True)
    e2 = tiny_model.encode(data.sentences2, convert_to_numpy=True)
    expected = 100 * scipy.stats.spearmanr(data.scores, 1 - paired_cosine_distances(e1, e2))[0]
    assert isinstance(result, EvalResult)
    assert result.main_score == pytest.approx(expected, abs=1e-3)
    assert result.main_score == result.scores["cosine_spearman"]
    assert (result.task, result.split, result.n) == ("STSBenchmark", "test", 40)
    assert set(result.to_json()) == {"task", "split", "n", "main_score", "scores"}
    assert -100 <= result.scores["dot_pearson"] <= 100


def test_each_distinct_sentence_is_encoded_once(tiny_model, stsb_file: Path) -> None:
    seen: list[str] = []

    def encoder(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return tiny_model.encode(texts, convert_to_numpy=True)

    data = load_sts(stsb_file)
    e1, e2 = encode_pairs(encoder, data.sentences1, data.sentences2)
    assert sorted(seen) == sorted(set(data.sentences1) | set(data.sentences2))
    assert len(seen) < 2 * len(data)  # rows share sentences
    direct = tiny_model.encode(data.sentences1[:5], convert_to_numpy=True)
    np.testing.assert_allclose(e1[:5], direct, atol=1e-5)
    assert e2.shape == e1.shape == (40, 32)


def test_encoders_with_encode_method_or_torch_output_are_accepted(tiny_model, stsb_file: Path) -> None:
    class TorchEncoder:
        def encode(self, texts: list[str]) -> torch.Tensor:
            return torch.from_numpy(tiny_model.encode(texts, convert_to_numpy=True))

    reference = evaluate_sts(tiny_model, stsb_file).main_score
    assert evaluate_sts(TorchEncoder(), stsb_file).main_score == pytest.approx(reference, abs=1e-3)
    with pytest.raises(ParameterError, match="expected \\(n, d\\)"):
        evaluate_sts(lambda texts: np.zeros(len(texts)), stsb_file)


def test_cli_json_is_one_quiet_line(capsys: pytest.CaptureFixture[str], tiny_st: Path, stsb_file: Path) -> None:
    code, out, err = run(capsys, "eval", "sts", str(stsb_file), "--model", str(tiny_st), "--json")
    assert code == 0, err
    (line,) = out.splitlines()
    obj = json.loads(line)
    assert set(obj) == {"task", "split", "n", "main_score", "scores", "encode_backend"}
    assert obj["n"] == 40 and obj["main_score"] == obj["scores"]["cosine_spearman"]
    assert "Batches" not in err and "%|" not in err  # no progress bar under --json


def test_cli_text_and_senteval_json(capsys: pytest.CaptureFixture[str], tiny_st: Path, tmp_path: Path) -> None:
    d = tmp_path / "STS16-en-test"
    d.mkdir()
    rng = np.random.default_rng(1)
    for subset, n in (("headlines", 12), ("plagiarism", 8)):
        rows = [f"{' '.join(rng.choice(WORDS, 5))}\t{' '.join(rng.choice(WORDS, 5))}" for _ in range(n)]
        (d / f"STS2016.input.{subset}.txt").write_text("\n".join(rows) + "\n")
        golds = [f"{rng.uniform(0, 5):.2f}" if i % 4 else "" for i in range(n)]
        (d / f"STS2016.gs.{subset}.txt").write_text("\n".join(golds) + "\n")
    code, out, err = run(capsys, "eval", "sts", str(d), "--model", str(tiny_st), "--json")
    assert code == 0, err
    obj = json.loads(out)
    assert (obj["task"], obj["n"]) == ("STS16", 9 + 6)
    assert set(obj["scores"]["subsets"]) == {"headlines", "plagiarism"}
    assert obj["scores"]["subsets"]["headlines"]["n"] == 9
    assert obj["main_score"] == obj["scores"]["all"]["cosine_spearman"]
    assert "wmean" in obj["scores"]
    code, out, err = run(capsys, "eval", "sts", str(d), "--model", str(tiny_st))
    assert code == 0, err
    assert "wmean (by subset size)" in out and "main score (cosine Spearman x100)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "nope"], "unknown STS format 'nope'"),
        (["--split", "dev"], "this file holds the 'test' split, not 'dev'"),
        (["--format", "senteval"], "not an STS.input.<subset>.txt file"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], stsb_file: Path, args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "eval", "sts", str(stsb_file), *args, "--json")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("simtool: error: ") and message in err
    assert str(stsb_file) in err or "--format" in err or "format" in err
