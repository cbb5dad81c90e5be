"""Encoder loading (offline), pooling modes against a manual float64 reference, fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from simtool.encoder import POOLINGS, encode_texts, load_encoder, model_fingerprint
from simtool.errors import ModelNotFoundError, SimtoolError
from simtool.protocols import encoder_info

TEXTS = ["the cat sat on the road", "a big red bus", "python code raises an exception at night"]


def _reference(model_dir: Path, texts: list[str], pooling: str) -> np.ndarray:
    """Pool the raw transformers outputs by hand, in float64."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    bert = AutoModel.from_pretrained(model_dir).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = [h.double() for h in bert(**batch, output_hidden_states=True).hidden_states]
    mask = batch["attention_mask"].unsqueeze(-1).double()
    masked_mean = lambda t: (t * mask).sum(1) / mask.sum(1)  # noqa: E731
    if pooling == "cls":
        return hidden[-1][:, 0].numpy()
    if pooling in ("mean", "last-avg"):
        return masked_mean(hidden[-1]).numpy()
    if pooling == "max":
        return hidden[-1].masked_fill(mask == 0, -1e9).max(1).values.numpy()
    assert pooling == "first-last-avg"
    return masked_mean((hidden[1] + hidden[-1]) / 2).numpy()  # hidden[0] is the embedding layer


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pooling_matches_manual_reference(tiny_bert: Path, pooling: str) -> None:
    model = load_encoder(tiny_bert, pooling=pooling, device="cpu")
    got = encode_texts(model, TEXTS)
    assert got.dtype == np.float32 and got.shape == (3, 32)
    np.testing.assert_allclose(got, _reference(tiny_bert, TEXTS, pooling), rtol=1e-4, atol=1e-5)


def test_poolings_differ(tiny_bert: Path) -> None:
    out = {p: encode_texts(load_encoder(tiny_bert, pooling=p, device="cpu"), TEXTS) for p in ("cls", "mean")}
    assert not np.allclose(out["cls"], out["mean"])


def test_first_last_avg_saves_and_reloads(tiny_bert: Path, tmp_path: Path) -> None:
    model = load_encoder(tiny_bert, pooling="first-last-avg", device="cpu")
    model.save(str(tmp_path / "m"))
    again = load_encoder(tmp_path / "m", device="cpu")
    assert encoder_info(again).pooling == "first-last-avg"
    np.testing.assert_array_equal(encode_texts(again, TEXTS), encode_texts(model, TEXTS))
    assert model_fingerprint(again) == model_fingerprint(model)


def test_sentence_transformers_dir_and_pooling_override(tiny_st: Path) -> None:
    model = load_encoder(tiny_st, device="cpu")
    plain = SentenceTransformer(str(tiny_st), device="cpu")
    np.testing.assert_allclose(encode_texts(model, TEXTS), plain.encode(TEXTS), atol=1e-6)
    assert np.allclose(np.linalg.norm(encode_texts(model, TEXTS), axis=1), 1.0, atol=1e-5)
    cls = load_encoder(tiny_st, pooling="cls", device="cpu")
    assert encoder_info(cls).pooling == "cls"
    assert model_fingerprint(cls) != model_fingerprint(model)


def test_fingerprint_is_stable_and_sees_weights(tiny_bert: Path) -> None:
    a = load_encoder(tiny_bert, pooling="mean", device="cpu")
    b = load_encoder(tiny_bert, pooling="mean", device="cpu")
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        next(b.parameters())[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)


def test_max_seq_length(tiny_bert: Path) -> None:
    model = load_encoder(tiny_bert, pooling="mean", device="cpu", max_seq_length=4)
    assert model.max_seq_length == 4
    # Truncation to 4 tokens ([CLS] + 2 words + [SEP]) makes texts sharing a 2-word prefix identical.
    a, b = encode_texts(model, ["the cat sat on the road", "the cat flew to the moon"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_missing_models_say_what_and_how(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"'someone/not-cached'.*Hugging Face cache.*hf download"):
        load_encoder("someone/not-cached")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_encoder(str(tmp_path / "nope" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        load_encoder(tmp_path / "empty")
    with pytest.raises(SimtoolError, match="unknown pooling 'avg'"):
        load_encoder(pooling="avg")


@pytest.mark.slow
def test_default_model_is_minilm_offline() -> None:
    model = load_encoder(device="cpu")
    assert model.get_embedding_dimension() == 384
    emb = encode_texts(model, ["A man is playing a guitar.", "Someone plays the guitar.", "A cat sleeps."])
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3  # paraphrase much closer than an unrelated sentence


def _simtool_module_dir(kind: str, tiny_bert: Path, target: Path) -> Any:
    if kind == "layer-pooling":
        model = load_encoder(tiny_bert, pooling="first-last-avg", device="cpu")
    else:
        from simtool.roformer_sim import build_roformer_sim

        model = build_roformer_sim(str(tiny_bert), device="cpu")
    model.prompts = {"query": "query: "}
    model.eval()
    model.save(str(target))
    return model


@pytest.mark.parametrize("kind", ["layer-pooling", "unilm-head"])
def test_simtool_modules_load_without_trust_remote_code(kind: str, tiny_bert: Path, tmp_path: Path) -> None:
    """simtool assembles its own module stacks through public sentence-transformers API only."""
    target = tmp_path / kind
    model = _simtool_module_dir(kind, tiny_bert, target)
    assert '"simtool.' in (target / "modules.json").read_text()
    # Plain sentence-transformers refuses the directory without trust_remote_code: the reason simtool loads it.
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(target), device="cpu")
    ours = load_encoder(target, device="cpu")
    # The reference: sentence-transformers' own loader, trusting the installed simtool classes by import path.
    trusted = SentenceTransformer(str(target), device="cpu", trust_remote_code=True)
    assert [type(m) for m in ours] == [type(m) for m in trusted] == [type(m) for m in model]
    expected = encode_texts(model, TEXTS)
    np.testing.assert_array_equal(encode_texts(ours, TEXTS), expected)
    np.testing.assert_array_equal(encode_texts(trusted, TEXTS), expected)
    assert model_fingerprint(ours) == model_fingerprint(model)
    assert ours.prompts["query"] == "query: " and ours.similarity_fn_name == model.similarity_fn_name
    assert ours.module_kwargs == trusted.module_kwargs
    if kind == "unilm-head":
        from simtool.roformer_sim import lm_head

        hidden = torch.randn(3, 32)
        with torch.no_grad():
            torch.testing.assert_close(lm_head(ours).logits(hidden), lm_head(model).logits(hidden), rtol=0, atol=0)
        # Tied, not copied: the head decodes with the loaded backbone's own embedding matrix.
        assert lm_head(ours)._tied[0] is ours[0].auto_model.get_input_embeddings()


def test_simtool_stack_with_an_untrusted_type_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    import json

    target = tmp_path / "m"
    _simtool_module_dir("layer-pooling", tiny_bert, target)
    entries = json.loads((target / "modules.json").read_text())
    entries[0]["type"] = "evil_package.Transformer"
    (target / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(SimtoolError, match=r"modules\.json.*evil_package\.Transformer"):
        load_encoder(target, device="cpu")
