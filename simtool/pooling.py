"""Pooling over several transformer layers, as a sentence-transformers module that saves and loads itself.

``first-last-avg`` (BERT-whitening's default) averages, per token, the output of
transformer block 1 and of the last block, then takes the masked mean over tokens.
Index 0 of ``hidden_states`` is the embedding layer, so block 1 is index 1.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from sentence_transformers.sentence_transformer.modules import Module


class LayerPooling(Module):
    """Masked mean over tokens of the mean of the chosen layers' outputs.

    Needs ``all_layer_embeddings`` from the Transformer module (``output_hidden_states=True``).
    Output: ``sentence_embedding`` of shape ``(batch, embedding_dimension)``.
    """

    config_keys: ClassVar[list[str]] = ["embedding_dimension", "layers"]

    def __init__(self, embedding_dimension: int, layers: list[int] | tuple[int, ...] = (1, -1)) -> None:
        super().__init__()
        self.embedding_dimension = embedding_dimension
        self.layers = [int(i) for i in layers]

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        hidden = features.get("all_layer_embeddings")
        if hidden is None:
            raise RuntimeError("LayerPooling needs hidden states: set output_hidden_states=True on the transformer")
        tokens = torch.stack([hidden[i] for i in self.layers]).mean(dim=0)
        mask = features["attention_mask"].unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * mask).sum(dim=1)
        features["sentence_embedding"] = summed / mask.sum(dim=1).clamp(min=1e-9)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
