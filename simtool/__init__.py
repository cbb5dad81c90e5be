"""simtool: train, reduce, index and evaluate sentence encoders.

The public names below load on first use (PEP 562), so ``import simtool`` and the CLI's ``--help``
stay free of torch, transformers and faiss until something actually encodes or searches.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from simtool._version import __version__
from simtool.errors import SimtoolError

# public name -> module that defines it
_LAZY = {
    "Document": "simtool.corpus",
    "read_documents": "simtool.corpus",
    "encode_texts": "simtool.encoder",
    "load_encoder": "simtool.encoder",
    "model_fingerprint": "simtool.encoder",
    "add_to_index": "simtool.index",
    "build_index": "simtool.index",
    "index_info": "simtool.index",
    "Hit": "simtool.retriever",
    "Retriever": "simtool.retriever",
}

if TYPE_CHECKING:
    from simtool.corpus import Document, read_documents
    from simtool.encoder import encode_texts, load_encoder, model_fingerprint
    from simtool.index import add_to_index, build_index, index_info
    from simtool.retriever import Hit, Retriever


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'simtool' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
