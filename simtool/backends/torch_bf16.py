"""``torch-bf16``: the transformer in bf16, pooling and the layers after it in fp32.

On CUDA it runs the model under bf16 autocast. On CPU it keeps a bf16 copy of the transformer, taken
at load (so later weight updates are not seen: load with ``backend='torch'`` to train); autocast on CPU
would re-cast every weight on every batch. Fast only where the CPU has native bf16 (``auto`` knows).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simtool.backends.base import BackendSpec, Built
from simtool.backends.registry import register

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

TOKEN_KEYS = ("token_embeddings", "all_layer_embeddings")


def build(model: SentenceTransformer, model_dir: Path) -> Built:
    import torch

    if model.device.type == "cuda":

        def run_cuda(features: dict[str, Any]) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                feats = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
                out = model(feats)["sentence_embedding"]
            return out.to("cpu", torch.float32).numpy()

        return Built(runner=run_cuda, precision="bfloat16-autocast")

    transformer = copy.deepcopy(model[0]).to(torch.bfloat16).eval()
    rest = list(model)[1:]

    def run(features: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            feats = transformer(dict(features))
            for key in TOKEN_KEYS:
                value = feats.get(key)
                if isinstance(value, torch.Tensor):
                    feats[key] = value.float()
                elif isinstance(value, (tuple, list)):
                    feats[key] = [v.float() for v in value]
            for module in rest:
                feats = module(feats)
        return feats["sentence_embedding"].to(torch.float32).numpy()

    return Built(runner=run, precision="bfloat16")


register(BackendSpec(name="torch-bf16", build=build, tolerance=5e-3, description="transformer in bf16"))
