"""A reduced model as a stock sentence-transformers directory: the original modules, then
``Dense`` (identity activation, weight = Wᵀ, bias = b), then ``Normalize``.

It loads with plain ``SentenceTransformer(path)``, no ``trust_remote_code``, unless the
encoder itself uses simtool's ``LayerPooling`` (``first-last-avg``), which is not a stock module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Normalize

from simtool.atomic import atomic_dir
from simtool.encoder import embedding_dim, model_fingerprint
from simtool.errors import SimtoolError
from simtool.reduce.base import LinearReducer


def reduced_model(model: SentenceTransformer, reducer: LinearReducer) -> SentenceTransformer:
    """``model`` followed by the reducer as stock layers; outputs ``(n, reducer.out_dim)``."""
    if reducer.source_fingerprint is not None and reducer.source_fingerprint != model_fingerprint(model):
        raise SimtoolError(
            f"the {reducer.kind} was fitted on vectors of model {reducer.source_fingerprint}, "
            f"not of this model ({model_fingerprint(model)})"
        )
    if reducer.in_dim != embedding_dim(model):
        raise SimtoolError(
            f"the {reducer.kind} expects {reducer.in_dim}-dim input, the model gives {embedding_dim(model)}"
        )
    bias = reducer.bias
    dense = Dense(
        reducer.in_dim,
        reducer.out_dim,
        bias=bias is not None,
        activation_function=None,  # identity
        init_weight=torch.from_numpy(reducer.weight.T.copy()),
        init_bias=None if bias is None else torch.from_numpy(bias.copy()),
    )
    modules = [*model, dense, *([Normalize()] if reducer.normalize else [])]
    out = SentenceTransformer(modules=modules, device=str(model.device))
    out.max_seq_length = model.max_seq_length
    return out


def export_reduced_model(model: SentenceTransformer, reducer: LinearReducer, output: str | Path) -> Path:
    """Write the reduced model to ``output`` atomically (staged beside it, then swapped in)."""
    target = Path(output)
    if target.exists() and not (target / "modules.json").exists() and any(target.iterdir()):
        raise SimtoolError(f"{target}: exists and is not a model directory; choose another output directory")
    with atomic_dir(target) as staging:
        reduced_model(model, reducer).save(str(staging))
    return target
