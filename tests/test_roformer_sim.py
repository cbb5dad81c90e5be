"""RoFormer-Sim: the model stack, exact combined-loss accumulation, BART noise rates, generation, export."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import WORDS, make_tiny_bert

from simtool.grad_cache import minibatch
from simtool.losses import RoFormerSimLoss, partner_contrastive_rows_loss
from simtool.noise import KEEP_RATE, MASK_RATE, RANDOM_RATE, whole_word_noise
from simtool.roformer_sim import (
    build_roformer_sim,
    export_retrieval,
    generate_similar,
    load_roformer_sim,
    pair_features,
    seq2seq_token_loss,
)

SEED = 99


def make_tiny_roformer(directory: Path) -> Path:
    """A random 2-layer RoFormer (rotary positions) with the tiny BERT's WordPiece tokenizer."""
    from transformers import RoFormerConfig, RoFormerModel

    make_tiny_bert(directory)  # writes the tokenizer (and a BERT we overwrite)
    torch.manual_seed(0)
    config = RoFormerConfig(
        vocab_size=len((directory / "vocab.txt").read_text().split()) if (directory / "vocab.txt").exists() else 200,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.5,
    )
    from transformers import AutoTokenizer

    config.vocab_size = len(AutoTokenizer.from_pretrained(directory))
    RoFormerModel(config).save_pretrained(directory)
    return directory


# The fast tier runs the tiny BERT; the rotary (RoFormer) variant of every test is slow tier, to keep the fast
# tier small.
@pytest.fixture(scope="module", params=["bert", pytest.param("roformer", marks=pytest.mark.slow)])
def sim_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    (make_tiny_roformer if request.param == "roformer" else make_tiny_bert)(directory)
    return build_roformer_sim(str(directory), device="cpu")


def pairs(k: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (" ".join(rng.choices(WORDS, k=rng.randint(2, 9))), " ".join(rng.choices(WORDS, k=rng.randint(2, 9))))
        for _ in range(k)
    ]


@pytest.mark.timeout(60)
def test_cls_vector_of_a_pair_row_equals_encoding_its_source_alone(sim_model) -> None:
    sim_model.eval()
    data = pairs(3)
    features, sources = pair_features(sim_model, data, 64)
    assert features["token_type_ids"][0].tolist().count(1) > 0
    with torch.no_grad():
        rows = sim_model(dict(features))["sentence_embedding"]
        alone = sim_model.encode(sources, convert_to_tensor=True)
    assert torch.allclose(rows, alone, atol=1e-5)
    # The rows of a pair differ (A vs B as source): [CLS] depends on the source only.
    assert not torch.allclose(rows[0], rows[1], atol=1e-3)


@pytest.mark.timeout(60)
def test_exported_retrieval_side_loads_in_plain_sentence_transformers(sim_model, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    sim_model.eval()
    target = export_retrieval(sim_model, tmp_path / "retrieval")
    assert "simtool" not in (target / "modules.json").read_text()
    plain = SentenceTransformer(str(target), device="cpu")
    texts = [" ".join(p) for p in pairs(4, seed=3)]
    got = plain.encode(texts, convert_to_tensor=True)
    expected = sim_model.encode(texts, convert_to_tensor=True)
    assert torch.allclose(got, expected, atol=1e-5)
    # And the [CLS] path of the UniLM rows gives those vectors too.
    features, sources = pair_features(sim_model, pairs(2, seed=4), 64)
    with torch.no_grad():
        rows = sim_model(dict(features))["sentence_embedding"]
    assert torch.allclose(rows, plain.encode(sources, convert_to_tensor=True), atol=1e-5)


@pytest.mark.timeout(60)
def test_full_model_round_trips_with_its_lm_head(sim_model, tmp_path: Path) -> None:
    sim_model.save(str(tmp_path / "full"))
    loaded = load_roformer_sim(tmp_path / "full", device="cpu")
    sim_model.eval()
    features, _ = pair_features(sim_model, pairs(2), 64)
    with torch.no_grad():
        a = seq2seq_token_loss(sim_model, features, sim_model(dict(features))["token_embeddings"])[0]
        b = seq2seq_token_loss(loaded, features, loaded(dict(features))["token_embeddings"])[0]
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    # The decoder is the word embedding matrix itself (tied), not a copy.
    head = loaded[-1]
    assert head._tied[0].weight is loaded[0].auto_model.get_input_embeddings().weight


# --------------------------------------------------------------------------- exact accumulation


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rel_error(got: dict, ref: dict) -> float:
    assert got.keys() == ref.keys()
    total = float(torch.sqrt(sum((v**2).sum() for v in ref.values())))
    return max(float((got[k] - ref[k]).norm()) / max(float(ref[k].norm()), 1e-4 * total) for k in ref)


def _full_batch_reference(model, loss: RoFormerSimLoss, features, b: int, labels=None) -> tuple[float, dict]:
    """Ordinary autograd over the whole batch; dropout masks drawn chunk by chunk as the cached run draws them."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    rows = features["input_ids"].shape[0]
    vectors, ce, count = [], 0.0, 0
    for begin in range(0, rows, b):
        mb = minibatch(features, begin, begin + b)
        vectors.append(loss.embed(mb))
        part, k = seq2seq_token_loss(model, mb, loss._tokens)
        ce, count = ce + part, count + k
    parts = loss.embeddings_loss_parts([torch.cat(vectors)], labels)
    value = ce / count + sum(parts.values())
    value.backward()
    return float(value.detach()), _grads(model)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("b", [2])
@pytest.mark.parametrize("options", [{}, {"margin": 0.2, "distill_weight": 100.0}])
def test_cached_combined_loss_gradients_equal_full_batch_gradients(sim_model, b: int, options: dict) -> None:
    model = sim_model.double().train()  # dropout on; float64 so that only the scheme can differ
    try:
        features, _ = pair_features(model, pairs(4, seed=7), 64)
        labels = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        labels = labels if options else None
        model.zero_grad(set_to_none=True)
        torch.manual_seed(SEED)
        cached_loss = RoFormerSimLoss(model, mini_batch_size=b, **options)
        value = cached_loss([features], labels)
        value.backward()
        cached = _grads(model)
        assert set(cached_loss.last_parts) == {"seq2seq", "contrastive"} | ({"distill"} if options else set())
        ref_value, full = _full_batch_reference(model, RoFormerSimLoss(model, **options), features, b, labels)
        assert float(value.detach()) == pytest.approx(ref_value, rel=1e-6)  # embeddings are float32 by contract
        assert _rel_error(cached, full) < 1e-5
        assert any("UniLMHead" in k or k.startswith("3.") for k in cached)  # the LM head is trained too

        # Naive chunking (each chunk its own contrastive batch) does not give these gradients.
        model.zero_grad(set_to_none=True)
        torch.manual_seed(SEED)
        naive = RoFormerSimLoss(model, **options)
        for begin in range(0, 8, b):
            chunk = minibatch(features, begin, begin + b)
            (naive([chunk], None if labels is None else labels[begin : begin + b]) * b / 8).backward()
        assert _rel_error(_grads(model), full) > 1e-3
    finally:
        sim_model.float()


def test_partner_contrastive_loss_matches_a_brute_force_softmax() -> None:
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    got = partner_contrastive_rows_loss(v, offset=0, begin=0, end=6, n=6, scale=20.0, margin=0.1)
    total = 0.0
    for i in range(6):
        logits = [20.0 * float(v[i] @ v[j]) - (20.0 * 0.1 if j == i ^ 1 else 0.0) for j in range(6) if j != i]
        target = [j for j in range(6) if j != i].index(i ^ 1)
        total += -(logits[target] - torch.logsumexp(torch.tensor(logits, dtype=torch.float64), 0).item())
    assert float(got) == pytest.approx(total / 6, rel=1e-9)


# --------------------------------------------------------------------------- noise


def test_whole_word_noise_hits_its_stated_rates_per_word() -> None:
    rng = random.Random(0)
    words, per_word = 40_000, 3
    ids = [100 + (i % 50) for i in range(words * per_word)]
    starts = [i % per_word == 0 for i in range(words * per_word)]
    out = whole_word_noise(ids, starts, rng, mask_id=4, vocab_size=10_000)
    masked = random_ = 0
    for w in range(words):
        span = range(w * per_word, (w + 1) * per_word)
        states = {"mask" if out[i] == 4 else ("same" if out[i] == ids[i] else "random") for i in span}
        if "mask" in states:
            assert states == {"mask"}  # whole words: every token of a word shares its fate
            masked += 1
        elif "random" in states:
            random_ += 1
    sd = lambda p: (p * (1 - p) / words) ** 0.5  # noqa: E731
    assert abs(masked / words - MASK_RATE) < 5 * sd(MASK_RATE)
    # A random id can equal the original (1 in 10^4 per token): negligible against the tolerance.
    assert abs(random_ / words - RANDOM_RATE) < 5 * sd(RANDOM_RATE)
    assert KEEP_RATE == 0.015


def test_noise_only_touches_sources_and_about_half_of_the_rows(sim_model) -> None:
    data = pairs(200, seed=11)
    clean, _ = pair_features(sim_model, data, 64)
    noisy, _ = pair_features(sim_model, data, 64, noise=0.5, rng=random.Random(0))
    seg = clean["token_type_ids"].bool()
    assert torch.equal(clean["input_ids"][seg], noisy["input_ids"][seg])  # targets B are always clean
    changed = (clean["input_ids"] != noisy["input_ids"]).any(dim=1).float().mean()
    # P(row changed) = 0.5 · (1 − 0.865^words) with 2-9 words: between 0.2 and 0.4.
    assert 0.15 < float(changed) < 0.45


def test_pairs_longer_than_max_length_are_truncated_from_their_longer_side(sim_model) -> None:
    features, _ = pair_features(sim_model, [("cat " * 30, "dog dog")], 16)
    assert features["input_ids"].shape[1] == 16
    assert features["token_type_ids"][0].sum() == 3  # "dog dog [SEP]" kept whole


# --------------------------------------------------------------------------- generation


@pytest.mark.timeout(60)
def test_generation_is_deterministic_under_a_seed_and_excludes_the_input(sim_model) -> None:
    a = generate_similar(sim_model, ["the cat is big", "red car"], n=3, candidates=6, seed=5, max_length=16)
    b = generate_similar(sim_model, ["the cat is big", "red car"], n=3, candidates=6, seed=5, max_length=16)
    assert a == b and len(a) == 2
    for text, results in zip(["the cat is big", "red car"], a, strict=True):
        assert all(t != text for t, _ in results)
        scores = [s for _, s in results]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.timeout(60)
def test_kv_cached_decoding_equals_recomputing_the_sequence(sim_model) -> None:
    from simtool.roformer_sim import _CachedDecoder, _RecomputeDecoder, _supports_kv_cache, sample_continuations

    sim_model.eval()
    backbone = sim_model[0].auto_model
    assert _supports_kv_cache(backbone)  # otherwise the default path would be the recompute one and this vacuous
    # Sources of different lengths: the cached side left-pads them, so positions are what could go wrong.
    rows = [[2, 7, 8, 3], [2, 9, 3], [2, 7, 8, 9, 10, 11, 3]]
    a = _RecomputeDecoder(backbone, rows, 7, 5, 0, "cpu")
    b = _CachedDecoder(backbone, rows, 7, 5, 0, "cpu")
    gen = torch.Generator().manual_seed(0)
    alive = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        for step in range(5):
            # A finished row's state is never read; the live rows' must match.
            assert torch.allclose(a.last_hidden()[alive], b.last_hidden()[alive], atol=1e-5), step
            token = torch.randint(5, 30, (3,), generator=gen)
            live = torch.tensor([True, step < 2, True])  # row 1 finishes early: its pads must not be keys
            alive &= live
            a.append(token, live)
            b.append(token, live)
    # And greedy decoding end to end gives the same text either way.
    texts = ["the cat is big", "a dog runs fast in the park today"]
    kw = {"candidates": 2, "top_k": 1, "max_length": 20, "seed": 0}
    assert sample_continuations(sim_model, texts, use_cache=True, **kw) == sample_continuations(
        sim_model, texts, use_cache=False, **kw
    )


@pytest.mark.timeout(60)
def test_a_briefly_trained_model_generates_its_seen_paraphrase(tmp_path: Path) -> None:
    from simtool.training import set_dropout

    # Seeded before the build: the LM head's random init would otherwise depend on the tests run before.
    torch.manual_seed(0)
    model = build_roformer_sim(str(make_tiny_bert(tmp_path / "m")), device="cpu").train()
    set_dropout(model, 0.0)
    data = [("the cat is big", "a big cat"), ("the dog runs fast", "a fast dog"), ("red car", "a red bus")]
    features, _ = pair_features(model, data, 32)
    loss = RoFormerSimLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    torch.manual_seed(0)
    for _ in range(60):
        optimizer.zero_grad()
        loss([features]).backward()
        optimizer.step()
    assert loss.last_parts["seq2seq"] < 0.1
    got = generate_similar(model, ["the cat is big", "red car"], n=1, candidates=8, seed=0, max_length=16)
    assert got[0][0][0] == "a big cat" and got[1][0][0] == "a red bus"
