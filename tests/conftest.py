"""Shared fixtures: a tiny randomly initialised BERT built here, and the path to ../shared/data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# CLI commands default to --backend auto, which converts each model to OpenVINO at load (seconds); tests that
# exercise a backend pass --backend explicitly.
os.environ.setdefault("SIMTOOL_BACKEND", "torch")

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "or",
    "is",
    "are",
    "was",
    "were",
    "be",
    "it",
    "this",
    "that",
    "with",
    "for",
    "on",
    "as",
    "by",
    "at",
    "from",
    "not",
    "no",
    "yes",
    "cat",
    "dog",
    "bird",
    "fish",
    "horse",
    "cow",
    "sheep",
    "mouse",
    "lion",
    "tiger",
    "car",
    "bus",
    "train",
    "plane",
    "boat",
    "bike",
    "road",
    "city",
    "town",
    "red",
    "green",
    "blue",
    "black",
    "white",
    "big",
    "small",
    "fast",
    "slow",
    "old",
    "new",
    "good",
    "bad",
    "hot",
    "cold",
    "day",
    "night",
    "sun",
    "moon",
    "star",
    "run",
    "walk",
    "eat",
    "drink",
    "sleep",
    "read",
    "write",
    "play",
    "sing",
    "swim",
    "fly",
    "jump",
    "sit",
    "stand",
    "open",
    "close",
    "find",
    "make",
    "take",
    "python",
    "code",
    "function",
    "class",
    "error",
    "exception",
    "loop",
    "list",
    "dict",
    "string",
    "number",
    "file",
    "index",
    "search",
    "query",
]


def shared_data_dir() -> Path | None:
    """``$SIMTOOL_SHARED_DATA`` or ``../shared/data`` beside the checkout; None when absent."""
    env = os.environ.get("SIMTOOL_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent")
    return path


def make_tiny_bert(directory: Path, *, seed: int = 0, hidden: int = 32, dropout: float = 0.1) -> Path:
    """Write a random 2-layer BERT and its WordPiece tokenizer as a plain transformers directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars, *(f"##{c}" for c in chars)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    # transformers 5 takes the vocabulary itself; a vocab_file argument would be silently ignored.
    BertTokenizer(vocab=vocab).save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        initializer_range=0.5,  # wide weights: random token vectors stay distinguishable after pooling
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain transformers directory (no modules.json)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A sentence-transformers directory: tiny BERT + mean pooling + Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    from simtool.encoder import load_encoder

    model = load_encoder(tiny_bert, pooling="mean", device="cpu")
    out = tmp_path_factory.mktemp("tiny-st")
    SentenceTransformer(modules=[*model, Normalize()], device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def encoder(tiny_st: Path) -> Any:
    """The tiny sentence-transformer, loaded once per test module."""
    from simtool.encoder import load_encoder

    return load_encoder(tiny_st, device="cpu")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """40 BEIR-style documents with distinct texts."""
    import random

    rng = random.Random(0)
    rows = [
        {"_id": f"d{i}", "title": f"title {WORDS[i % len(WORDS)]}", "text": " ".join(rng.choices(WORDS, k=12))}
        for i in range(40)
    ]
    return write_jsonl(tmp_path / "corpus.jsonl", rows)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the ``simtool`` CLI in-process; returns ``(exit status, stdout, stderr)``."""
    from simtool.cli import main

    capsys.readouterr()
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def count_encode_calls(monkeypatch: pytest.MonkeyPatch, encoder: Any) -> list[int]:
    """Record the number of texts of each ``encoder.encode`` call (the list fills as the test runs)."""
    calls: list[int] = []
    original = encoder.encode

    def counted(texts: list[str], **kw: object) -> object:
        calls.append(len(texts))
        return original(texts, **kw)

    monkeypatch.setattr(encoder, "encode", counted)
    return calls


def committed_state(directory: Path) -> dict[str, bytes]:
    """``manifest.json`` and every file it lists: all a reader of the newest generation can see."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    names = ["manifest.json", *manifest.get("files", {})]
    return {name: (directory / name).read_bytes() for name in names}


def segment_file(directory: Path, name: str, segment: int = 0) -> Path:
    """The path of ``name`` (``vectors.npy``, ``index.faiss``, ``docs.sqlite``) in one segment of an index."""
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    return directory / "segments" / manifest["segments"][segment]["name"] / name


def search_rows(result: tuple[Any, list[list[tuple[int, int]]]]) -> tuple[Any, Any]:
    """``Retriever.search_vectors`` output as ``(scores, rows)`` for a one-segment index."""
    import numpy as np

    scores, hits = result
    assert all(seg == 0 for h in hits for seg, _ in h)
    return scores, np.array([[row for _, row in h] for h in hits])
