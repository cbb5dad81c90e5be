"""The numpy fast-path pooling matches the sentence-transformers modules it replaces, per pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simtool.encoder import load_encoder
from simtool.pooling import fast_path

TEXTS = ["the cat sat on the road", "a dog", "the red bus is fast and old", "python code with an error"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "first-last-avg"])
def test_fast_path_matches_sentence_transformers(tiny_bert: Path, pooling: str) -> None:
    model = load_encoder(tiny_bert, pooling=pooling, device="cpu").eval()
    features = {
        k: v for k, v in model.tokenize(TEXTS).items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    path = fast_path(list(model))
    with torch.no_grad():
        out = model[0].auto_model(**features, output_hidden_states=True)
    tokens = (
        out.last_hidden_state
        if path.layers is None
        else torch.stack([out.hidden_states[i] for i in path.layers]).mean(0)
    )
    got = path(tokens.numpy(), features["attention_mask"].numpy())
    np.testing.assert_allclose(got, model.encode(TEXTS, convert_to_numpy=True), atol=1e-5)
