"""Token-window chunking and MaxP scoring against brute-force references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simtool.chunking import (
    dedupe_chunk_hits,
    encode_chunked,
    encode_long,
    max_by_owner,
    mean_by_owner,
    search_chunk_max,
    token_windows,
)
from simtool.errors import SimtoolError


def _text(n_words: int, seed: int) -> str:
    from tests.conftest import WORDS

    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


@pytest.fixture(scope="module")
def model(tiny_st: Path):  # type: ignore[no-untyped-def]
    from simtool.encoder import load_encoder

    return load_encoder(tiny_st, device="cpu")


@pytest.mark.timeout(60)
def test_windows_cover_the_tokens_with_the_requested_overlap(model) -> None:  # type: ignore[no-untyped-def]
    tok = model.tokenizer
    texts = [_text(100, 1), "", _text(5, 2)]
    windows, owners = token_windows(tok, texts, chunk_tokens=20, chunk_overlap=5)
    assert owners.tolist() == sorted(owners.tolist()) and set(owners.tolist()) == {0, 1, 2}
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    got = [tok(w, add_special_tokens=False)["input_ids"] for w, o in zip(windows, owners, strict=True) if o == 0]
    expected, start = [], 0
    while True:
        expected.append(ids[start : start + 20])
        if start + 20 >= len(ids):
            break
        start += 15
    assert got == expected
    assert windows[owners.tolist().index(1)] == ""
    with pytest.raises(SimtoolError, match=r"chunk_overlap must be in 0\.\.19"):
        encode_chunked(model, texts, chunk_tokens=20, chunk_overlap=20)
    with pytest.raises(SimtoolError, match=r"chunk_tokens must be in 1\.\.62"):
        encode_chunked(model, texts, chunk_tokens=63)


@pytest.mark.timeout(60)
def test_chunk_mean_is_the_normalised_mean_of_chunk_vectors(model) -> None:  # type: ignore[no-untyped-def]
    texts = [_text(150, 3), _text(10, 4)]
    chunked = encode_chunked(model, texts, mode="chunk-max", chunk_tokens=30, chunk_overlap=0)
    assert chunked.n_texts == 2 and np.count_nonzero(chunked.owners == 0) >= 4
    mean = encode_long(model, texts, mode="chunk-mean", chunk_tokens=30, chunk_overlap=0)
    ref = np.stack([chunked.vectors[chunked.owners == t].astype(np.float64).mean(0) for t in range(2)])
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, ref, atol=1e-6)
    # a text that fits in one window is encoded exactly as plain truncation encodes it
    np.testing.assert_allclose(mean[1], encode_long(model, texts[1:])[0], atol=1e-6)


def test_mean_by_owner_without_normalisation() -> None:
    v = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]], np.float32)
    np.testing.assert_allclose(mean_by_owner(v, np.array([0, 0, 1]), 2), [[2.0, 3.0], [5.0, 0.0]])


@pytest.mark.parametrize("sorted_owners", [True, False])
def test_chunk_max_returns_each_document_once_with_its_best_chunk(sorted_owners: bool) -> None:
    rng = np.random.default_rng(7)
    n_docs, d = 30, 8
    owners = np.repeat(np.arange(n_docs), rng.integers(1, 6, n_docs))
    if not sorted_owners:
        owners = rng.permutation(owners)
    chunks = rng.standard_normal((len(owners), d)).astype(np.float32)
    queries = rng.standard_normal((12, d)).astype(np.float32)
    scores, rows = search_chunk_max(queries, chunks, owners, n_docs, k=10, block=5)
    for q in range(len(queries)):
        # brute force: every document's best chunk, in plain Python
        best = {doc: max(float(queries[q] @ chunks[c]) for c in np.flatnonzero(owners == doc)) for doc in range(n_docs)}
        ranked = sorted(best, key=lambda doc: (-best[doc], doc))[:10]
        assert rows[q].tolist() == ranked
        assert len(set(rows[q].tolist())) == 10
        np.testing.assert_allclose(scores[q], [best[doc] for doc in ranked], rtol=1e-5)
        # the same from sorted chunk hits, as an index search returns them
        chunk_scores = queries[q] @ chunks.T
        order = np.argsort(-chunk_scores, kind="stable")
        s2, d2 = dedupe_chunk_hits(chunk_scores[order], order, owners, 10)
        assert d2 == ranked
        np.testing.assert_allclose(s2, [best[doc] for doc in ranked], rtol=1e-5)


def test_max_by_owner_marks_documents_without_chunks() -> None:
    out = max_by_owner(np.array([[1.0, 3.0, 2.0]]), np.array([0, 0, 2]), 3)
    assert out.tolist() == [[3.0, -np.inf, 2.0]]
    assert dedupe_chunk_hits(np.array([5.0, 4.0]), np.array([-1, 2]), np.array([0, 0, 2]), 3) == ([4.0], [2])
