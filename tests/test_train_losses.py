"""The contrastive losses of simtool.losses against a float64 numpy reference written from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simtool.errors import ParameterError
from simtool.losses import InBatchContrastiveLoss, SupSimCSELoss, UnsupSimCSELoss, in_batch_contrastive_loss


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: threading only adds overhead, and the CI machine is shared.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_loss(
    a: np.ndarray,
    p: np.ndarray,
    n: np.ndarray | None = None,
    *,
    scale: float,
    margin: float,
    weight: float = 1.0,
    symmetric: bool = False,
    same_view: bool = False,
    teacher: np.ndarray | None = None,
    distill: float = 0.0,
) -> float:
    """Row by row, loops only: -log e^{s(cos_ii - m)} / (e^{s(cos_ii - m)} + Σ_{j≠i} e^{s cos_ij}
    + Σ_j w^{[i=j]} e^{s cos(a_i, n_j)} [+ Σ_{j≠i} e^{s cos(a_i, a_j)}]), averaged over rows; optionally
    averaged with the reverse direction, plus λ·mean((cos_A − cos_T)²).
    """
    a, p = _unit(a.astype(np.float64)), _unit(p.astype(np.float64))
    n = None if n is None else _unit(n.astype(np.float64))
    rows = len(a)

    def direction(queries: np.ndarray, positives: np.ndarray, hard: np.ndarray | None, same: np.ndarray | None):
        total = 0.0
        for i in range(rows):
            terms = []
            for j in range(rows):
                cos = float(queries[i] @ positives[j])
                terms.append(scale * (cos - margin) if i == j else scale * cos)
            positive_logit = terms[i]
            if hard is not None:
                for j in range(rows):
                    if i == j and weight == 0:
                        continue
                    bonus = math.log(weight) if i == j else 0.0
                    terms.append(scale * float(queries[i] @ hard[j]) + bonus)
            if same is not None:
                terms.extend(scale * float(queries[i] @ same[j]) for j in range(rows) if j != i)
            log_z = np.logaddexp.reduce(np.array(terms))
            total += log_z - positive_logit
        return total / rows

    loss = direction(a, p, n, a if same_view else None)
    if symmetric:
        loss = (loss + direction(p, a, None, p if same_view else None)) / 2
    if distill:
        t = _unit(teacher.astype(np.float64))
        loss += distill * float(np.mean((a @ a.T - t @ t.T) ** 2))
    return loss


CASES = [
    {"scale": 20.0, "margin": 0.0},
    {"scale": 20.0, "margin": 0.2},
    {"scale": 30.0, "margin": 0.35, "symmetric": True},
    {"scale": 20.0, "margin": 0.1, "same_view": True, "symmetric": True},
    {"scale": 20.0, "margin": 0.2, "hard": True},
    {"scale": 20.0, "margin": 0.0, "hard": True, "weight": 2.0},
    {"scale": 20.0, "margin": 0.1, "hard": True, "weight": 0.0, "symmetric": True},
    {"scale": 20.0, "margin": 0.2, "hard": True, "weight": 0.5, "same_view": True, "distill": 100.0},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_loss_matches_float64_reference(case: dict) -> None:
    rng = np.random.default_rng(0)
    rows, dim = 7, 5
    # Correlated anchor/positive pairs so that the positive logit matters, not only the denominator.
    a = rng.normal(size=(rows, dim))
    p = a + 0.5 * rng.normal(size=(rows, dim))
    n = rng.normal(size=(rows, dim)) if case.get("hard") else None
    teacher = rng.normal(size=(rows, 3)) if case.get("distill") else None
    expected = reference_loss(
        a,
        p,
        n,
        scale=case["scale"],
        margin=case["margin"],
        weight=case.get("weight", 1.0),
        symmetric=case.get("symmetric", False),
        same_view=case.get("same_view", False),
        teacher=teacher,
        distill=case.get("distill", 0.0),
    )
    as32 = lambda x: None if x is None else torch.tensor(x, dtype=torch.float32)  # noqa: E731
    got = in_batch_contrastive_loss(
        as32(a),
        as32(p),
        as32(n),
        scale=case["scale"],
        margin=case["margin"],
        hard_negative_weight=case.get("weight", 1.0),
        symmetric=case.get("symmetric", False),
        same_view_negatives=case.get("same_view", False),
        teacher=as32(teacher),
        distill_weight=case.get("distill", 0.0),
    )
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_margin_raises_loss_by_the_expected_amount_on_an_easy_batch() -> None:
    # Orthogonal embeddings, each its own perfect positive: every row's loss is log(1 + (B-1) e^{-s(1-m)}),
    # a closed form that checks the margin by hand, not only against the reference.
    a = torch.eye(4)
    for m in (0.0, 0.2):
        got = float(in_batch_contrastive_loss(a, a.clone(), scale=5.0, margin=m))
        assert got == pytest.approx(math.log(1 + 3 * math.exp(-5.0 * (1 - m))), rel=1e-5)


def test_loss_modules_follow_the_sentence_transformers_loss_interface(tiny_bert) -> None:
    from simtool.encoder import load_encoder

    model = load_encoder(tiny_bert, pooling="mean", device="cpu")
    features = model.preprocess(["the cat", "a dog runs", "red car", "old town"])
    torch.manual_seed(0)
    unsup = UnsupSimCSELoss(model, margin=0.1)
    loss = unsup([features], None)
    assert loss.ndim == 0 and loss.requires_grad and math.isfinite(loss.item())
    assert unsup.get_config_dict()["margin"] == 0.1 and "SimCSE" in unsup.citation
    sup = SupSimCSELoss(model, mini_batch_size=2)
    cached = sup([features, features, model.preprocess(["no", "yes", "sun", "moon"])], None)
    cached.backward()  # gradient caching runs its replays inside this backward
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ParameterError, match="2 or 3 input columns"):
        InBatchContrastiveLoss(model)([features], None)
    with pytest.raises(ParameterError, match="scale must be positive, got 0"):
        InBatchContrastiveLoss(model, scale=0)
