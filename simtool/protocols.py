"""The encoder seam: what simtool calls on an encoder, and what it knows of where one came from.

:class:`Encoder` is the part of :class:`sentence_transformers.SentenceTransformer` that simtool's indexes,
retriever, embedder, backends and evals call, as MTEB v2's ``EncoderProtocol`` is the part its tasks call:
a ``SentenceTransformer`` (with or without a :mod:`simtool.backends` backend attached) satisfies it.

:class:`EncoderInfo` is an encoder's provenance (the model it was loaded from, its pooling and the backend
its ``encode`` runs through), recorded by :func:`simtool.encoder.load_encoder` and read with
:func:`encoder_info`. This module imports neither torch nor sentence-transformers.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TextEncoder(Protocol):
    """The least the evals score: ``encode(texts)`` returning ``(n, d)`` array-like vectors (numpy or torch)."""

    def encode(self, inputs: Sequence[str], /) -> Any: ...


@runtime_checkable
class Encoder(TextEncoder, Protocol):
    """Texts to sentence vectors, as a ``SentenceTransformer`` does: what indexes, retrievers and backends take.

    ``encode`` is called with a list of texts and these keywords; it returns ``(n, d)`` vectors (numpy
    when ``convert_to_numpy``). Iterating yields the module stack and ``state_dict`` the weights, which
    :func:`simtool.encoder.model_fingerprint` hashes; ``tokenizer`` counts tokens.
    """

    def encode(
        self,
        inputs: Sequence[str],
        *,
        batch_size: int = ...,
        show_progress_bar: bool | None = ...,
        convert_to_numpy: bool = ...,
    ) -> Any: ...

    def get_embedding_dimension(self) -> int | None: ...

    @property
    def max_seq_length(self) -> int | None: ...

    @property
    def tokenizer(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class EncoderInfo:
    """Where an encoder came from. ``source``: what :func:`~simtool.encoder.load_encoder` was given (the default
    model's name for ``None``); ``pooling``: in simtool's vocabulary; ``backend``, ``precision``, ``artifact`` (the
    hash of an exported file) and ``exported`` (its directory): what ``encode`` runs through.

    An encoder simtool did not load has ``source`` and ``pooling`` None and fp32 ``torch``.
    """

    source: str | None = None
    pooling: str | None = None
    backend: str = "torch"
    precision: str = "float32"
    artifact: str | None = None
    exported: Path | None = None


# Keyed by the encoder object itself, held weakly: the record lives exactly as long as the model and needs
# no attribute on a third-party object (nn.Module types unknown attributes as tensors or modules, and a
# subclass or a future version may claim the names). Identity is the key: nn.Module keeps object equality
# and hashing, so a copy of a model is a new encoder with no record, as a model simtool did not load. The
# values must not refer to their model (a value that did would keep its key alive): hence plain fields here,
# and no backend runner. Writes happen at load time; reads and writes of one key are atomic under the GIL.
_INFO: weakref.WeakKeyDictionary[Any, EncoderInfo] = weakref.WeakKeyDictionary()
_UNKNOWN = EncoderInfo()


def encoder_info(encoder: object) -> EncoderInfo:
    """The provenance :func:`~simtool.encoder.load_encoder` recorded for ``encoder``, else :class:`EncoderInfo`'s
    defaults (also for an object that cannot be weakly referenced or hashed, e.g. a plain callable's wrapper)."""
    try:
        return _INFO.get(encoder, _UNKNOWN)
    except TypeError:
        return _UNKNOWN


def record_encoder_info(encoder: object, **changes: Any) -> EncoderInfo:
    """Set fields of ``encoder``'s :class:`EncoderInfo` (the others kept); returns the new record."""
    info = dataclasses.replace(encoder_info(encoder), **changes)
    _INFO[encoder] = info
    return info
