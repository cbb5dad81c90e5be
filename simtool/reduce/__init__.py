"""Dimension reduction: BERT-whitening, JL random projection, dimension rules, export as stock layers."""

from simtool.reduce.base import LinearReducer, apply_chain, load_reducer
from simtool.reduce.dims import entropy_dim, jl_dim
from simtool.reduce.projection import RandomProjection
from simtool.reduce.whitening import MeanCovariance, Whitening

__all__ = [
    "LinearReducer",
    "MeanCovariance",
    "RandomProjection",
    "Whitening",
    "apply_chain",
    "entropy_dim",
    "jl_dim",
    "load_reducer",
]
