"""BART-style source noise of RoFormer-Sim (techniques.md §3.3, bojone's stage1.py ``masked_encode``).

Per whole word, r ~ U(0, 1): r < 0.12 → every token of the word becomes [MASK]; 0.12 ≤ r < 0.135 → kept;
0.135 ≤ r < 0.15 → each token replaced by a random id in [1, vocab − 1]; else kept. The recipe applies it to a
row's source with probability 0.5; the target is always clean, and the model must write a similar sentence
(not the original) from the noisy source.

Words: jieba segmentation for text with CJK characters (when jieba is installed); otherwise WordPiece word starts
(a token not starting with ``##``), which for English are the whitespace/punctuation words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from simtool.errors import ParameterError

MASK_RATE = 0.12
KEEP_RATE = 0.015
RANDOM_RATE = 0.015

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def whole_word_noise(
    ids: Sequence[int],
    starts: Sequence[bool],
    rng: random.Random,
    *,
    mask_id: int,
    vocab_size: int,
    mask_rate: float = MASK_RATE,
    keep_rate: float = KEEP_RATE,
    random_rate: float = RANDOM_RATE,
) -> list[int]:
    """``ids`` with whole words masked / randomised; ``starts[i]`` is True where a word begins at token i."""
    if len(starts) != len(ids):
        raise ParameterError(f"starts has {len(starts)} entries for {len(ids)} token ids")
    out = list(ids)
    action = "keep"
    for i, token in enumerate(ids):
        if starts[i] or i == 0:
            r = rng.random()
            if r < mask_rate:
                action = "mask"
            elif r < mask_rate + keep_rate:
                action = "keep"
            elif r < mask_rate + keep_rate + random_rate:
                action = "random"
            else:
                action = "keep"
        if action == "mask":
            out[i] = mask_id
        elif action == "random":
            out[i] = rng.randint(1, vocab_size - 1)
        else:
            out[i] = token
    return out


def word_starts(tokenizer: Any, text: str, ids: Sequence[int]) -> list[bool]:
    """Where words begin among ``ids`` (the tokens of ``text`` without special tokens)."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    if _CJK.search(text):
        starts = _jieba_starts(text, tokens)
        if starts is not None:
            return starts
    return [not str(t).startswith("##") for t in tokens]


def _jieba_starts(text: str, tokens: Sequence[str]) -> list[bool] | None:
    """Align jieba words to character-level tokens; None when jieba is missing or the alignment fails."""
    try:
        import jieba
    except ImportError:
        return None
    boundaries, at = set(), 0
    for word in jieba.lcut(text):
        word = word.strip()
        if word:
            boundaries.add(at)
            at += len(word)
    starts, pos = [], 0
    for token in tokens:
        piece = str(token).removeprefix("##")
        if piece in ("[UNK]", ""):
            piece = "?"
        starts.append(pos in boundaries)
        pos += len(piece)
    if pos != at:
        return None  # not a one-character-per-token vocabulary: fall back to WordPiece starts
    return starts
