"""Fitting reducers where users need them: on an index's stored vectors, or on a corpus through an encoder.

Tuning uses the raw embeddings of STS dev pairs, encoded by the model being reduced; the caller
supplies them through a ``Tuning`` callable (``simtool.evals.tuning.sts_tuning``) so the core never
imports evals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from simtool.config import resolve_index_dir
from simtool.encoder import batched_documents, encode_texts, model_fingerprint
from simtool.errors import SimtoolError
from simtool.index import CorpusFields, live_vectors, load_index_encoder, reduce_index
from simtool.manifest import Manifest
from simtool.protocols import Encoder
from simtool.reduce.dims import entropy_dim
from simtool.reduce.projection import Distribution, RandomProjection
from simtool.reduce.whitening import Whitening

TuneSet = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Raw embeddings ``(n, d)`` of both sides of STS pairs and their gold scores ``(n,)`` float64."""
Tuning = Callable[[Encoder], TuneSet]
"""Makes the tuning set with the encoder being reduced (``simtool.evals.tuning.sts_tuning`` reads STS files)."""


def _index_vectors(index_dir: Path) -> tuple[Manifest, np.ndarray]:
    return Manifest.load(index_dir), live_vectors(index_dir)


def whiten_index(
    index_dir: str | Path | None = None,
    *,
    dim: int | str | None = None,
    power: float | str = 0.5,
    eps: float = 0.0,
    tune: Tuning | None = None,
    factory: str | None = None,
    progress: bool = True,
) -> tuple[Whitening, Manifest]:
    """Fit whitening on an index's raw corpus vectors and rebuild the index at ``dim`` dimensions."""
    target = resolve_index_dir(index_dir)
    manifest, raw = _index_vectors(target)
    whitening = Whitening(dim, power, eps).fit(
        raw, tune=tune(load_index_encoder(manifest)) if tune else None, source_fingerprint=manifest.model.fingerprint
    )
    return whitening, reduce_index(whitening, target, factory=factory, progress=progress)


def projection_dim(dim: int | str, n_vectors: int, model_dim: int) -> int:
    """An int, or ``"auto"``: the entropy rule round(8.33·ln N) for N vectors, when that is below the model's dim."""
    if dim != "auto":
        try:
            return int(dim)
        except ValueError:
            raise SimtoolError(f"dim must be an integer or 'auto', got {dim!r}") from None
    k = entropy_dim(max(n_vectors, 2))
    if k >= model_dim:
        raise SimtoolError(
            f"the 8.33 ln N rule asks for {k} dims for {n_vectors} vectors, not fewer than the model's {model_dim}: "
            "nothing to gain from a projection"
        )
    return k


def project_index(
    index_dir: str | Path | None = None,
    *,
    dim: int | str = "auto",
    distribution: Distribution = "gaussian",
    seed: int = 0,
    factory: str | None = None,
    progress: bool = True,
) -> tuple[RandomProjection, Manifest]:
    """Project an index's raw vectors to ``dim`` (``"auto"``: 8.33·ln N) and rebuild it."""
    target = resolve_index_dir(index_dir)
    manifest = Manifest.load(target)
    k = projection_dim(dim, manifest.count, manifest.model.dim)
    projection = RandomProjection(k, distribution, seed).fit(
        manifest.model.dim, source_fingerprint=manifest.model.fingerprint
    )
    return projection, reduce_index(projection, target, factory=factory, progress=progress)


def corpus_vectors(model: Encoder, corpus: str | Path, fields: CorpusFields = CorpusFields()) -> Iterator[np.ndarray]:
    """Encode a corpus chunk by chunk, for streaming fits that never hold the whole corpus."""
    for batch in batched_documents(fields.read(Path(corpus))):
        yield encode_texts(model, [d.encoded_text for d in batch])


def whiten_model(
    corpus: str | Path,
    output: str | Path,
    *,
    model: str | Path | None = None,
    pooling: str | None = None,
    dim: int | str | None = None,
    power: float | str = 0.5,
    eps: float = 0.0,
    tune: Tuning | None = None,
    fields: CorpusFields = CorpusFields(),
    backend: str = "torch",
) -> tuple[Whitening, Path]:
    """Fit whitening on ``corpus`` encoded by ``model`` and write the reduced model to ``output``.

    ``backend``: what encodes the corpus (and the tuning data); recorded as ``whitening.backend_``.
    The written model is the torch module stack either way.
    """
    from simtool.backends import backend_info
    from simtool.encoder import load_encoder
    from simtool.reduce.export import export_reduced_model

    fields.count(Path(corpus))  # validate the whole file before encoding any of it
    encoder = load_encoder(model, pooling, backend=backend)
    whitening = Whitening(dim, power, eps).fit(
        corpus_vectors(encoder, corpus, fields),
        tune=tune(encoder) if tune else None,
        source_fingerprint=model_fingerprint(encoder),
    )
    whitening.backend_ = backend_info(encoder)
    return whitening, export_reduced_model(encoder, whitening, output)


def project_model(
    corpus: str | Path,
    output: str | Path,
    *,
    model: str | Path | None = None,
    pooling: str | None = None,
    dim: int | str = "auto",
    distribution: Distribution = "gaussian",
    seed: int = 0,
    fields: CorpusFields = CorpusFields(),
) -> tuple[RandomProjection, Path]:
    """A projection sized for ``corpus`` (``"auto"``: 8.33·ln N), appended to ``model`` and written to ``output``."""
    from simtool.encoder import embedding_dim, load_encoder
    from simtool.reduce.export import export_reduced_model

    n = fields.count(Path(corpus))
    encoder = load_encoder(model, pooling)
    d = embedding_dim(encoder)
    projection = RandomProjection(projection_dim(dim, n, d), distribution, seed)
    projection.fit(d, source_fingerprint=model_fingerprint(encoder))
    return projection, export_reduced_model(encoder, projection, output)
