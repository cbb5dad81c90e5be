"""The typed seams: what counts as an encoder or a searcher, and where an encoder's provenance lives."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from simtool import protocols
from simtool.backends import backend_info
from simtool.encoder import load_encoder
from simtool.protocols import Encoder, EncoderInfo, TextEncoder, encoder_info
from simtool.vector_index import FaissSearcher, MaskedSearcher, Searcher, TorchExactSearcher


def test_a_loaded_encoder_and_a_plain_sentence_transformer_are_encoders(tiny_bert: Path, tiny_st: Path) -> None:
    loaded = load_encoder(tiny_bert, pooling="cls", device="cpu")  # torch backend attached: encode replaced
    plain = SentenceTransformer(str(tiny_st), device="cpu")
    for model in (loaded, plain):
        assert isinstance(model, Encoder) and isinstance(model, TextEncoder)
    assert not isinstance(object(), TextEncoder)
    assert not isinstance(lambda texts: texts, Encoder)  # a callable is enough for the evals, not for an index


def test_provenance_is_a_frozen_record_not_attributes_on_the_model(tiny_bert: Path, tiny_st: Path) -> None:
    model = load_encoder(tiny_bert, pooling="cls", device="cpu", backend="torch")
    info = encoder_info(model)
    assert info == EncoderInfo(source=str(tiny_bert), pooling="cls", backend="torch", precision="float32")
    assert not [name for name in vars(model) if name.startswith("simtool")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.backend = "openvino"  # type: ignore[misc]  # the point: frozen
    assert backend_info(model)["name"] == "torch" and backend_info(model)["precision"] == "float32"
    plain = SentenceTransformer(str(tiny_st), device="cpu")
    assert encoder_info(plain) == EncoderInfo()  # not loaded by simtool: no source, fp32 torch
    assert encoder_info([1, 2]) == EncoderInfo()  # neither hashable nor weakly referable


def test_the_record_goes_with_its_model(tiny_bert: Path) -> None:
    gc.collect()  # models of earlier tests, unreachable but not yet collected
    before = len(protocols._INFO)
    model = load_encoder(tiny_bert, device="cpu")
    assert len(protocols._INFO) == before + 1
    del model
    gc.collect()
    assert len(protocols._INFO) == before  # the record does not keep its model alive


def test_searchers_satisfy_their_protocols() -> None:
    import faiss

    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    torch_searcher = TorchExactSearcher(x, "ip", "cpu")
    index = faiss.IndexFlatIP(8)
    index.add(x)
    faiss_searcher = FaissSearcher(index, {}, gpu=False)
    assert isinstance(torch_searcher, MaskedSearcher) and isinstance(torch_searcher, Searcher)
    assert isinstance(faiss_searcher, Searcher)
    scores, rows = torch_searcher.search(x[:2], 3, np.arange(20) % 2 == 0)
    assert (rows % 2 == 0).all() and scores.shape == (2, 3)
