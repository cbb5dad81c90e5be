"""simtool: train, reduce, index and evaluate sentence encoders."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Resolved on first use, so that light modules (simtool.shuffle, the CLI) do not pay for torch.
_LAZY = {
    "Document": "simtool.corpus",
    "read_documents": "simtool.corpus",
    "encode_texts": "simtool.encoder",
    "load_encoder": "simtool.encoder",
    "model_fingerprint": "simtool.encoder",
    "SimtoolError": "simtool.errors",
    "add_to_index": "simtool.index",
    "build_index": "simtool.index",
    "index_info": "simtool.index",
    "Hit": "simtool.retriever",
    "Retriever": "simtool.retriever",
}

if TYPE_CHECKING:
    from simtool.corpus import Document, read_documents
    from simtool.encoder import encode_texts, load_encoder, model_fingerprint
    from simtool.errors import SimtoolError
    from simtool.index import add_to_index, build_index, index_info
    from simtool.retriever import Hit, Retriever


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Document",
    "Hit",
    "Retriever",
    "SimtoolError",
    "__version__",
    "add_to_index",
    "build_index",
    "encode_texts",
    "index_info",
    "load_encoder",
    "model_fingerprint",
    "read_documents",
]
