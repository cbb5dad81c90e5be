"""Encode backends, slow tier: OpenVINO per pooling and for a whitened model (one conversion each), the
exact fp32 export, and static int8 on the real default model, where its accuracy means something."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simtool.backends import BACKENDS
from simtool.encoder import load_encoder
from simtool.protocols import encoder_info
from tests.test_backends import TEXTS, check_against_fp32, fp32, one_minus_cos

pytestmark = pytest.mark.slow


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pooling", ["cls", "max", "first-last-avg"])  # mean: the fast tier
def test_openvino_matches_fp32_per_pooling(tiny_bert: Path, pooling: str) -> None:
    check_against_fp32(tiny_bert, pooling, "openvino")


@pytest.mark.timeout(120)
def test_openvino_matches_fp32_for_a_whitened_model(tiny_st: Path, tmp_path: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    base = load_encoder(tiny_st, device="cpu")
    dense = Dense(32, 16, bias=True, activation_function=torch.nn.Identity())
    torch.manual_seed(1)
    torch.nn.init.normal_(dense.linear.weight)
    SentenceTransformer(modules=[base[0], base[1], dense], device="cpu").save(str(tmp_path / "w"))
    for backend in ("openvino", "torch-bf16"):
        check_against_fp32(tmp_path / "w", None, backend)


@pytest.mark.timeout(120)
def test_fp32_export_is_exact_under_a_zero_drop_guard(tiny_st: Path, tmp_path: Path) -> None:
    from simtool.backends.export import export_model

    record = export_model(load_encoder(tiny_st, device="cpu"), "openvino", tmp_path / "fp32", max_drop=0.0)
    assert record["guard"]["drop"] == 0.0 and record["guard"]["max_one_minus_cos"] < 1e-5
    assert encoder_info(load_encoder(tmp_path / "fp32", device="cpu", backend="auto")).backend == "openvino"


@pytest.mark.timeout(300)
def test_int8_export_of_the_default_model_keeps_sts_accuracy(tmp_path: Path) -> None:
    """all-MiniLM-L6-v2, built-in calibration: mean cos to fp32 >= 0.99; STS-sample Spearman at most 0.5 below fp32.

    The Spearman reference is scipy's, on sentence-transformers' own fp32 vectors, not the guard's code.
    """
    from scipy.stats import spearmanr

    from simtool.backends.export import export_model, read_sts_sample

    base = load_encoder(None, device="cpu")
    record = export_model(base, "openvino-int8", tmp_path / "int8", max_drop=0.5)
    int8 = load_encoder(tmp_path / "int8", device="cpu", backend="openvino-int8")
    s1, s2, gold = read_sts_sample()
    texts = s1 + s2 + TEXTS
    got, ref = int8.encode(texts, batch_size=16), fp32(base, texts)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.mean() >= 0.99
    # the worst text moves more (3.1e-2 measured on 500 STS-B test sentences), hence the stated tolerance
    assert one_minus_cos(got, ref) <= BACKENDS["openvino-int8"].tolerance

    def score(v: np.ndarray) -> float:
        a, b = v[: len(s1)], v[len(s1) : 2 * len(s1)]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return float(spearmanr(gold, cos).statistic * 100)

    # The guard's contract is one-sided (a drop past max_drop refuses the export), and its figures must be
    # scipy's. A rise is not refused: with openvino 2026.4 / nncf 3.4 the export scores 1.49 points *above*
    # fp32 on these 48 pairs (vectors within the tolerance above), which a two-sided 0.5 bound called a failure.
    assert score(ref) - score(got) <= 0.5
    assert record["guard"]["spearman"] == pytest.approx(score(got), abs=1e-3)
    assert record["guard"]["spearman_fp32"] == pytest.approx(score(ref), abs=1e-3)
