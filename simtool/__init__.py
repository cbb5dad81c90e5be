"""simtool: train, reduce, index and evaluate sentence encoders."""

from __future__ import annotations

__version__ = "0.1.0"

from simtool.corpus import Document, read_documents
from simtool.encoder import encode_texts, load_encoder, model_fingerprint
from simtool.errors import SimtoolError
from simtool.index import add_to_index, build_index, index_info
from simtool.retriever import Hit, Retriever

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
