"""Texts to vectors exactly as an index encodes them (encoder, then the index's reducers), thread-safe.

The LangChain and LlamaIndex adapters and ``simtool serve`` all encode through an :class:`Embedder`,
so a vector from any of them equals the one ``Retriever.encode`` (queries) or ``simtool encode``
(a bare model) computes.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simtool.errors import SimtoolError
from simtool.protocols import Encoder, encoder_info

if TYPE_CHECKING:
    from simtool.reduce.base import LinearReducer

log = logging.getLogger(__name__)


class Embedder:
    """An encoder plus the reducer chain that follows it; one lock serialises forward passes.

    ``name`` is what clients see as the model id. ``encode`` returns ``(n, dim)`` float32.
    """

    def __init__(
        self, encoder: Encoder, reducers: Sequence[LinearReducer] = (), *, name: str, index_dir: Path | None = None
    ):
        self.encoder = encoder
        self.reducers = list(reducers)
        self.name = name
        self.index_dir = index_dir
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._counter: Any = None  # a second tokenizer, so counting never waits on a running encode

    @classmethod
    def from_model(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        pooling: str | None = None,
        backend: str = "torch",
    ) -> Embedder:
        """A bare model (a directory, a cached hub name or None for all-MiniLM-L6-v2): no reducers."""
        from simtool.encoder import load_encoder

        encoder = load_encoder(model, pooling, device, backend=backend)
        source = str(encoder_info(encoder).source)
        return cls(encoder, (), name=Path(source).name or source)

    @classmethod
    def from_index(
        cls, index_dir: str | os.PathLike[str], *, device: str | None = None, backend: str | None = None
    ) -> Embedder:
        """The encoder that built ``index_dir`` (fingerprint-checked) followed by its reducers, as its queries are.

        ``backend``: ``None`` (the index's own), ``auto`` or a name within its tolerance
        (:mod:`simtool.backends.compat`).
        """
        from simtool.index import load_index_encoder, load_reducers
        from simtool.manifest import Manifest

        directory = Path(index_dir)
        manifest = Manifest.load(directory)
        reducers = load_reducers(manifest, directory)
        encoder = load_index_encoder(manifest, device, backend)
        name = Path(manifest.model.name_or_path).name or manifest.model.name_or_path
        return cls(encoder, reducers, name=name, index_dir=directory)

    @property
    def backend(self) -> str:
        """The encode backend ``encode`` runs through (:mod:`simtool.backends`)."""
        return encoder_info(self.encoder).backend

    @property
    def dim(self) -> int:
        from simtool.encoder import embedding_dim

        return self.reducers[-1].out_dim if self.reducers else embedding_dim(self.encoder)

    @property
    def truncatable(self) -> bool:
        """True when the output's leading components are the most informative ones (a whitening is last)."""
        return bool(self.reducers) and self.reducers[-1].kind == "whitening"

    def check_dimensions(self, dimensions: int | None) -> None:
        """Raise unless ``dimensions`` is None, the full dim, or a prefix length of a whitened output."""
        if dimensions is None or dimensions == self.dim:
            return
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions <= 0:
            raise SimtoolError(f"dimensions must be a positive integer, got {dimensions!r}")
        if dimensions > self.dim:
            raise SimtoolError(f"dimensions must be at most {self.dim} for model {self.name}, got {dimensions}")
        if not self.truncatable:
            raise SimtoolError(
                f"dimensions={dimensions} is not meaningful for model {self.name}: its {self.dim} coordinates are "
                "not ordered by variance, so dropping some is not a reduction; serve a whitened index "
                "(simtool whiten) to get prefix dimensions, or omit dimensions"
            )

    def _chain(self, dimensions: int | None) -> list[LinearReducer]:
        if dimensions is None or dimensions == self.dim:
            return self.reducers
        last = copy.copy(self.reducers[-1])
        # Whitening's columns are eigenvectors in descending eigenvalue order: its first k columns are
        # exactly the whitening fitted at dim=k, renormalised afterwards as the full one is.
        last._set_affine(last.weight[:, :dimensions], last.center)
        return [*self.reducers[:-1], last]

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, dimensions: int | None = None) -> np.ndarray:
        """``(len(texts), dim or dimensions)`` float32, in input order; one encoder call for all texts."""
        from simtool.reduce.base import apply_chain

        self.check_dimensions(dimensions)
        return apply_chain(self._chain(dimensions), self.encode_raw(texts, batch_size=batch_size))

    def encode_raw(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """The encoder's own output ``(len(texts), d)`` float32, before any reducer: what an index stores."""
        from simtool.encoder import encode_texts

        with self._lock:
            return encode_texts(self.encoder, list(texts), batch_size=batch_size)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies in the encoder (special tokens included, truncated as encode truncates)."""
        with self._count_lock:
            if self._counter is None:
                self._counter = self._load_counter()
            limit = self.encoder.max_seq_length
            ids = self._counter(list(texts), add_special_tokens=True, truncation=limit is not None, max_length=limit)
            return [len(x) for x in ids["input_ids"]]

    def _load_counter(self) -> Any:
        from transformers import AutoTokenizer

        source = getattr(self.encoder.tokenizer, "name_or_path", None)
        try:
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        except Exception:  # an unusual layout: fall back to the encoder's own tokenizer, under the encode lock
            log.info("token counting shares the encoder's tokenizer (%s did not load separately)", source)
            tokenizer = self.encoder.tokenizer

            def counted(texts: list[str], **kwargs: Any) -> Any:
                with self._lock:
                    return tokenizer(texts, **kwargs)

            return counted
