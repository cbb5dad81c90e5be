"""RoFormer-Sim / SimBERTv2 (techniques.md §3): one model trained to retrieve ([CLS] contrastive) and to write a
similar sentence (UniLM seq2seq), on pairs of similar sentences.

Data: CSV/TSV/JSONL with ``sent0, sent1`` (a similar pair per row; gzip and streaming as for the other recipes).
Each pair becomes two adjacent model rows ``[CLS] A [SEP] B [SEP]`` and ``[CLS] B [SEP] A [SEP]``, so
``--batch-size`` counts pairs (the published 96 rows = ``--batch-size 48``) and so does ``--mini-batch-size``.
A pair longer than ``--max-seq-length`` tokens is truncated from the end of its longer side (one warning).
``--noise``: BART-style whole-word noise on the source of each row with probability 0.5 (:mod:`simtool.noise`).
``--teacher M --distill-weight 100``: the cosine-matrix distillation of stage 2, generation loss kept.

Output: the full model (encoder + LM head, for ``simtool generate``) in the output directory, and its retrieval
side as a plain sentence-transformers directory in ``OUTPUT/retrieval``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simtool.errors import CorpusError
from simtool.training.recipes import Recipe, register

PAIR_COLUMNS = ("sent0", "sent1")
NOISE_PROBABILITY = 0.5  # stage1.py: half of the rows get a noised source
RETRIEVAL_DIR = "retrieval"


def columns(path: Path, fmt: str, names: list[str] | None) -> tuple[str, ...]:
    """CSV/TSV/JSONL with ``sent0, sent1`` (other columns, e.g. ``hard_neg``, are ignored)."""
    if fmt == "txt":
        raise CorpusError(f"{path}: roformer-sim needs pairs (CSV/TSV/JSONL with columns sent0,sent1), not a .txt")
    names = names or []
    missing = [c for c in PAIR_COLUMNS if c not in names]
    if missing:
        hint = (
            "; groups ({'text', 'synonyms'}) are not supported yet: write one row per pair"
            if "synonyms" in names
            else ""
        )
        raise CorpusError(
            f"{path}: roformer-sim needs columns sent0,sent1; missing {', '.join(missing)} in {names}{hint}"
        )
    return PAIR_COLUMNS


def loss_class() -> Any:
    from simtool.losses import RoFormerSimLoss

    def make(model: Any, *, mini_batch_size: int | None = None, **kwargs: Any) -> RoFormerSimLoss:
        # The loop's sizes count file rows (pairs); the loss counts model rows, two per pair.
        return RoFormerSimLoss(
            model, mini_batch_size=None if mini_batch_size is None else 2 * mini_batch_size, **kwargs
        )

    return make


def texts_per_row(cols: Sequence[str]) -> int:
    return 2


def build_model(source: str | None, device: str) -> Any:
    from simtool.roformer_sim import build_roformer_sim

    return build_roformer_sim(source, device=device)


def inputs(model: Any, rows: list[tuple[str, ...]], config: Any, step: int) -> tuple[list[dict[str, Any]], list[str]]:
    from simtool.roformer_sim import pair_features

    # Seeded by (seed, step): a resumed run draws the same noise for the same step.
    rng = random.Random(f"roformer-sim-noise:{config.seed}:{step}")
    noise = NOISE_PROBABILITY if getattr(config, "noise", False) else 0.0
    pairs = [(r[0], r[1]) for r in rows]
    features, sources = pair_features(model, pairs, config.max_seq_length, noise=noise, rng=rng)
    return [features], sources


def export(output: Path) -> None:
    from simtool.atomic import atomic_dir
    from simtool.roformer_sim import export_retrieval, load_roformer_sim

    model = load_roformer_sim(output, device="cpu")
    with atomic_dir(output / RETRIEVAL_DIR) as staging:
        export_retrieval(model, staging)


def probe(model: Any, features: dict[str, Any]) -> Any:
    """The [CLS] vectors and the LM head's cross-entropy: the head runs outside the forward, so DDP must not
    take its parameters for unused ones."""
    from simtool.roformer_sim import seq2seq_token_loss

    out = model(features)
    return out["sentence_embedding"].float().sum() + seq2seq_token_loss(model, features, out["token_embeddings"])[0]


RECIPE = register(Recipe("roformer-sim", columns, loss_class, texts_per_row, build_model, inputs, export, probe))
