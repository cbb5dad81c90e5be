"""The UniLM mask of RoFormer-Sim: equal to brute force; [CLS] of [CLS] A [SEP] B [SEP] == [CLS] of [CLS] A [SEP]."""

from __future__ import annotations

import random

import pytest
import torch

from simtool.roformer_sim import unilm_attention_bias, unilm_mask


def brute_force(segments: list[int], length: int) -> torch.Tensor:
    """Rows of the real queries: i attends j iff j is real and sum(seg[:j+1]) <= sum(seg[:i+1])."""
    n = len(segments)
    out = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            out[i, j] = sum(segments[: j + 1]) <= sum(segments[: i + 1])
    return out


@pytest.mark.timeout(30)
def test_mask_equals_brute_force_for_random_layouts_with_padding() -> None:
    rng = random.Random(0)
    for _ in range(20):
        rows, segs = 3, []
        for _ in range(rows):
            a, b = rng.randint(1, 5), rng.randint(0, 4)
            segs.append([0] * a + [1] * b)
        length = max(len(s) for s in segs) + rng.randint(0, 2)
        seg = torch.tensor([s + [0] * (length - len(s)) for s in segs])
        att = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in segs])
        got = unilm_mask(seg, att)
        for r, s in enumerate(segs):
            n = len(s)
            # Padding queries (i >= n) are never read; compare the real queries' rows, over every key.
            assert torch.equal(got[r, :n], brute_force(s, length)), (s, length)


def _tiny(kind: str) -> torch.nn.Module:
    from transformers import BertConfig, BertModel, RoFormerConfig, RoFormerModel

    torch.manual_seed(0)
    common = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    common |= {"intermediate_size": 32, "max_position_embeddings": 64}
    if kind == "roformer":
        return RoFormerModel(RoFormerConfig(embedding_size=16, **common)).eval()
    return BertModel(BertConfig(**common)).eval()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["roformer", "bert"])
def test_cls_of_a_pair_equals_cls_of_its_first_sentence_alone(kind: str) -> None:
    model = _tiny(kind)
    # [CLS]=1 A [SEP]=2 B [SEP]=2, then one padding position; a second row with a different B.
    ids = torch.tensor([[1, 5, 6, 7, 2, 8, 9, 2, 0], [1, 5, 6, 7, 2, 10, 11, 12, 2]])
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1]])
    att = torch.tensor([[1] * 8 + [0], [1] * 9])
    with torch.no_grad():
        pair = model(ids, attention_mask=unilm_attention_bias(seg, att), token_type_ids=seg).last_hidden_state
        alone = model(ids[:1, :5], token_type_ids=seg[:1, :5]).last_hidden_state
    for row in range(2):
        assert torch.allclose(pair[row, 0], alone[0, 0], atol=1e-5)
    # Without the mask B leaks into [CLS]: the property is the mask's doing.
    with torch.no_grad():
        plain = model(ids, attention_mask=att, token_type_ids=seg).last_hidden_state
    assert not torch.allclose(plain[1, 0], alone[0, 0], atol=1e-3)
