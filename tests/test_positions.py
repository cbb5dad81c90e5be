"""Hierarchical position extension: the formula, the written model directory, backward compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simtool.errors import SimtoolError
from simtool.positions import PositionsNotExtendable, extend_positions, hierarchical_positions


def _direct(p: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """The blog's 1-based formula evaluated term by term in float64, for one 0-based position k."""
    n = p.shape[0]
    i, j = k // n + 1, k % n + 1  # 1-based (i, j) with k+1 = (i-1) n + j
    p1 = p[0].astype(np.float64)

    def u(t: int) -> np.ndarray:
        return (p[t - 1].astype(np.float64) - alpha * p1) / (1 - alpha)

    return alpha * u(i) + (1 - alpha) * u(j)


@pytest.mark.parametrize("alpha", [0.4, 0.2, 0.7])
def test_formula_matches_direct_float64(alpha: float) -> None:
    rng = np.random.default_rng(0)
    p = rng.standard_normal((16, 5)).astype(np.float32)
    q = hierarchical_positions(p, 16 * 16, alpha)
    assert q.shape == (256, 5) and q.dtype == np.float32
    direct = np.stack([_direct(p, k, alpha) for k in range(256)])
    np.testing.assert_allclose(q, direct, rtol=1e-6, atol=1e-6)
    # q_k = p_k for k < n: bit for bit, and the formula gives the same analytically
    assert np.array_equal(q[:16], p)
    np.testing.assert_allclose(direct[:16], p, atol=1e-5)
    # (i, j) and (j, i) are distinct positions because alpha != 0.5
    assert not np.allclose(q[1 * 16 + 2], q[2 * 16 + 1])


def test_formula_rejects_bad_arguments() -> None:
    p = np.zeros((4, 2), np.float32)
    with pytest.raises(SimtoolError, match="alpha"):
        hierarchical_positions(p, 8, 0.5)
    with pytest.raises(SimtoolError, match=r"length must be in 1\.\.16"):
        hierarchical_positions(p, 17)


@pytest.fixture(scope="module")
def extended(tiny_st: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extend_positions(tiny_st, 200, tmp_path_factory.mktemp("ext") / "model")


def _long_text(n_words: int) -> str:
    words = ["cat", "dog", "bird", "red", "blue", "python", "code", "the", "of", "search"]
    return " ".join(words[(i * 7 + i // 3) % len(words)] for i in range(n_words))


@pytest.mark.timeout(120)
def test_extended_model_loads_in_plain_sentence_transformers(extended: Path, tiny_st: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    from simtool.encoder import load_encoder

    assert AutoConfig.from_pretrained(extended).max_position_embeddings == 200
    plain = SentenceTransformer(str(extended), device="cpu")
    assert plain.max_seq_length == 200
    ours = load_encoder(extended, device="cpu")
    texts = [_long_text(150), _long_text(40), "a cat"]
    a = plain.encode(texts, convert_to_numpy=True)
    b = ours.encode(texts, convert_to_numpy=True)
    assert np.array_equal(a, b)
    # the 150-word text really used positions past the original 64
    assert len(plain.tokenizer(texts[0])["input_ids"]) > 64
    # short texts: bit for bit the original model's vectors
    original = SentenceTransformer(str(tiny_st), device="cpu")
    short = ["a cat and a dog", _long_text(50), "python code search"]
    assert all(len(original.tokenizer(t)["input_ids"]) <= 64 for t in short)
    assert np.array_equal(original.encode(short, convert_to_numpy=True), plain.encode(short, convert_to_numpy=True))
    # and the long text differs from its truncation, so the new positions are in use
    assert not np.allclose(a[0], original.encode(texts[:1], convert_to_numpy=True)[0])


@pytest.mark.timeout(60)
def test_load_encoder_beyond_limit_says_how_to_extend(tiny_st: Path, extended: Path) -> None:
    from simtool.encoder import load_encoder

    with pytest.raises(SimtoolError, match="needs an extended model: `simtool extend-positions") as err:
        load_encoder(tiny_st, device="cpu", max_seq_length=100)
    assert "\n" not in str(err.value)
    assert load_encoder(extended, device="cpu", max_seq_length=150).max_seq_length == 150
    with pytest.raises(SimtoolError, match="exceeds the 200 positions"):
        load_encoder(extended, device="cpu", max_seq_length=201)


@pytest.mark.timeout(60)
def test_text_past_extended_maximum_is_truncated_with_one_warning(
    extended: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from simtool.chunking import encode_long
    from simtool.encoder import load_encoder

    model = load_encoder(extended, device="cpu")
    with caplog.at_level("WARNING", logger="simtool.chunking"):
        first = encode_long(model, [_long_text(400), "a dog"], mode="truncate")
        encode_long(model, [_long_text(500)], mode="truncate")
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "200" in warnings[0].getMessage()
    # truncation keeps the first 200 tokens: same vector as the text cut to them
    ids = model.tokenizer(_long_text(400), add_special_tokens=False)["input_ids"][:198]
    cut = model.tokenizer.decode(ids)
    np.testing.assert_allclose(first[0], model.encode([cut], convert_to_numpy=True)[0], atol=1e-5)


def test_rotary_model_is_skipped_with_a_message(tmp_path: Path) -> None:
    from transformers import RoFormerConfig, RoFormerModel

    from tests.conftest import make_tiny_bert

    src = make_tiny_bert(tmp_path / "bert")
    config = RoFormerConfig(
        vocab_size=200, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    RoFormerModel(config).save_pretrained(tmp_path / "roformer")
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (tmp_path / "roformer" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(PositionsNotExtendable, match="needs no position extension"):
        extend_positions(tmp_path / "roformer", 1024, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_non_model_directory(tiny_st: Path, tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(SimtoolError, match="not a model directory"):
        extend_positions(tiny_st, 128, tmp_path / "keep")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_cli_extend_positions_writes_a_model_plain_st_loads(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sentence_transformers import SentenceTransformer

    from tests.conftest import run_cli

    out = tmp_path / "ext"
    code, stdout, _ = run_cli(
        capsys, "extend-positions", "--model", str(tiny_st), "--max-length", "300", "--output", str(out), "--json"
    )
    assert code == 0 and json.loads(stdout)["max_length"] == 300
    assert SentenceTransformer(str(out), device="cpu")[0].auto_model.config.max_position_embeddings == 300


def test_cli_extend_positions_bad_length_is_one_line(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "ext"
    code, _, err = run_cli(
        capsys, "extend-positions", "--model", str(tiny_st), "--max-length", "10", "--output", str(out)
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("simtool: error:")
    assert not out.exists()
