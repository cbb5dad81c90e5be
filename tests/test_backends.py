"""Encode backends: vectors vs fp32 torch per pooling and whitened, the auto rule (faked flags), export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from simtool.backends import BACKENDS, Capabilities, backend_info, choose_backend
from simtool.encoder import load_encoder
from simtool.errors import SimtoolError
from tests.conftest import run_cli

# Real sentences (from the built-in STS sample); unknown words fall to the tiny model's characters.
TEXTS = [
    json.loads(line)[k]
    for line in (Path(__file__).resolve().parents[1] / "simtool" / "data" / "sts_sample.jsonl").read_text().splitlines()[
        :12
    ]
    for k in ("sentence1", "sentence2")
]


def _one_minus_cos(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float((1 - cos).max())


def _fp32(model: object) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer.encode(model, TEXTS, batch_size=5, convert_to_numpy=True)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "first-last-avg"])
@pytest.mark.parametrize("backend", ["torch", "openvino", "torch-bf16"])
def test_backend_matches_fp32_sentence_transformers(tiny_bert: Path, pooling: str, backend: str) -> None:
    model = load_encoder(tiny_bert, pooling=pooling, device="cpu", backend=backend)
    got = model.encode(TEXTS, batch_size=5)  # batches of 5 by token length, against ST's own order
    assert got.shape == (len(TEXTS), 32)
    assert _one_minus_cos(got, _fp32(model)) <= BACKENDS[backend].tolerance


@pytest.mark.timeout(120)
def test_backends_match_fp32_for_a_whitened_model(tiny_st: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    base = load_encoder(tiny_st, device="cpu")
    dense = Dense(32, 16, bias=True, activation_function=torch.nn.Identity())
    torch.manual_seed(1)
    torch.nn.init.normal_(dense.linear.weight)
    SentenceTransformer(modules=[base[0], base[1], dense], device="cpu").save(str(tmp_path / "w"))
    for backend in ("openvino", "torch"):
        model = load_encoder(tmp_path / "w", device="cpu", backend=backend)
        got = model.encode(TEXTS, batch_size=4)
        assert got.shape == (len(TEXTS), 16)
        assert _one_minus_cos(got, _fp32(model)) <= BACKENDS[backend].tolerance


def test_auto_rule_with_faked_cpu_flags() -> None:
    plain = frozenset({"avx2", "fma"})
    bf16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
    amx = frozenset({"avx2", "amx_bf16", "amx_tile"})
    assert choose_backend(Capabilities(cuda=False, cpu_flags=plain, openvino=True)) == "openvino"
    assert choose_backend(Capabilities(cuda=False, cpu_flags=bf16, openvino=True)) == "openvino-bf16"
    assert choose_backend(Capabilities(cuda=False, cpu_flags=amx, openvino=False)) == "torch-bf16"
    assert choose_backend(Capabilities(cuda=False, cpu_flags=plain, openvino=False)) == "torch"
    assert choose_backend(Capabilities(cuda=True, cpu_flags=plain, openvino=True)) == "torch-bf16"
    assert choose_backend(Capabilities(False, plain, True, exported="openvino-int8")) == "openvino-int8"
    assert choose_backend(Capabilities(False, plain, False, exported="openvino-int8")) == "torch"


def test_missing_extra_names_it(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(SimtoolError, match=r"simtool\[openvino\]") as e:
        load_encoder(tiny_bert, device="cpu", backend="openvino")
    assert "\n" not in str(e.value)


def test_int8_without_export_is_one_line(tiny_bert: Path) -> None:
    with pytest.raises(SimtoolError, match="no openvino-int8 export") as e:
        load_encoder(tiny_bert, device="cpu", backend="openvino-int8")
    assert "\n" not in str(e.value)


def test_order_restored_and_single_text(tiny_st: Path) -> None:
    model = load_encoder(tiny_st, device="cpu", backend="openvino")
    texts = ["a b c d e f g h i", "x", "the cat", "a dog runs fast on the road"]
    full = model.encode(texts, batch_size=2)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(model.encode(t), full[i], atol=1e-5)
    assert backend_info(model)["name"] == "openvino"


@pytest.mark.timeout(180)
def test_export_int8_round_trips_and_detects_corruption(
    tiny_st: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "int8"
    code, stdout, err = run_cli(
        capsys, "export", str(tiny_st), "--backend", "openvino-int8", "--output", str(out), "--max-drop", "100", "--json"
    )
    assert code == 0, err
    record = json.loads(stdout)
    assert record["calibration"]["source"] == "built-in" and len(record["calibration"]["sha256"]) == 64
    assert record["guard"]["pairs"] == 48
    fp32 = load_encoder(tiny_st, device="cpu")
    loaded = load_encoder(out, device="cpu", backend="auto")  # auto takes the export; no calibration at load
    assert loaded.simtool_backend == "openvino-int8"
    assert backend_info(loaded)["exported"] == str(out)
    got = loaded.encode(TEXTS)
    assert _one_minus_cos(got, fp32.encode(TEXTS)) <= BACKENDS["openvino-int8"].tolerance
    # the directory is still a normal sentence-transformers model for torch
    np.testing.assert_allclose(load_encoder(out, device="cpu").encode(TEXTS), fp32.encode(TEXTS), atol=1e-6)

    binary = out / "openvino" / "openvino_model_qint8_quantized.bin"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0xFF
    binary.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "encode", str(tiny_st), "-o", str(tmp_path / "x.npy"))  # sanity: CLI runs
    with pytest.raises(SimtoolError, match="corrupt") as e:
        load_encoder(out, device="cpu", backend="openvino-int8")
    assert "\n" not in str(e.value)
    binary.unlink()
    with pytest.raises(SimtoolError, match="missing"):
        load_encoder(out, device="cpu", backend="openvino-int8")


@pytest.mark.timeout(120)
def test_export_refuses_past_max_drop_and_writes_nothing(tiny_st: Path, tmp_path: Path) -> None:
    from simtool.backends.export import export_model

    model = load_encoder(tiny_st, device="cpu")
    # A negative drop threshold is refused as input; a zero one can only pass if int8 changes no rank.
    with pytest.raises(SimtoolError, match="max_drop must be >= 0"):
        export_model(model, "openvino-int8", tmp_path / "a", max_drop=-1)
    record = export_model(model, "openvino", tmp_path / "fp32", max_drop=0.0)
    assert record["guard"]["drop"] == 0.0 and record["guard"]["max_one_minus_cos"] < 1e-5
    assert not (tmp_path / "a").exists()
