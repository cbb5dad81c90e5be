"""The backend registry, the ``auto`` rule, and attaching a backend to a loaded encoder.

``auto`` is a pure function of the machine's capabilities (:func:`choose_backend`):

1. a model directory holding a ``simtool export`` (which passed its accuracy guard) → that export,
   when OpenVINO is installed;
2. CUDA → ``torch-bf16`` (bf16 autocast);
3. OpenVINO installed → ``openvino-bf16`` on a CPU with native bf16 (avx512_bf16 or AMX), else ``openvino`` (fp32);
4. native bf16 CPU without OpenVINO → ``torch-bf16``;
5. otherwise ``torch`` (fp32).

int8 is never picked without an export: static quantisation needs calibration and the guard.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simtool.backends.base import BackendSpec, Built, encode_sorted
from simtool.errors import SimtoolError
from simtool.protocols import Encoder, encoder_info, record_encoder_info
from simtool.validate import check_batch_size

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

BACKENDS: dict[str, BackendSpec] = {}
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
EXPORT_DIR = "openvino"
EXPORT_RECORD = "simtool_export.json"


def register(spec: BackendSpec) -> BackendSpec:
    if spec.name in BACKENDS:
        raise RuntimeError(f"backend {spec.name!r} registered twice")
    BACKENDS[spec.name] = spec
    return spec


def backend_names() -> list[str]:
    return ["auto", *BACKENDS]


@dataclass(frozen=True)
class Capabilities:
    """What the ``auto`` rule looks at. ``exported``: the backend of a ``simtool export`` in the model dir."""

    cuda: bool
    cpu_flags: frozenset[str]
    openvino: bool
    exported: str | None = None

    @property
    def native_bf16(self) -> bool:
        return bool(NATIVE_BF16_FLAGS & self.cpu_flags)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags (Linux ``/proc/cpuinfo``; empty elsewhere, which makes ``auto`` conservative)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def detect_capabilities(device: str, model_dir: Path | None = None) -> Capabilities:
    record = read_export_record(model_dir) if model_dir is not None else None
    return Capabilities(
        cuda=device.startswith("cuda"),
        cpu_flags=cpu_flags(),
        openvino=BACKENDS["openvino"].available(),
        exported=None if record is None else str(record["backend"]),
    )


def choose_backend(caps: Capabilities) -> str:
    """The ``auto`` rule (module docstring) as a pure function."""
    if caps.exported is not None and caps.openvino:
        return caps.exported
    if caps.cuda:
        return "torch-bf16"
    if caps.openvino:
        return "openvino-bf16" if caps.native_bf16 else "openvino"
    return "torch-bf16" if caps.native_bf16 else "torch"


def get_backend(name: str) -> BackendSpec:
    spec = BACKENDS.get(name)
    if spec is None:
        raise SimtoolError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}")
    if not spec.available():
        raise SimtoolError(f"backend {name!r} needs the {spec.extra} extra: pip install 'simtool[{spec.extra}]'")
    return spec


def read_export_record(model_dir: Path) -> dict[str, Any] | None:
    """The JSON record ``simtool export`` wrote in ``model_dir``, or ``None`` when it exported nothing there."""
    path = model_dir / EXPORT_DIR / EXPORT_RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        record["backend"]
    except (ValueError, KeyError, TypeError):
        raise SimtoolError(f"{path}: corrupt export record; export the model again with `simtool export`") from None
    return record


def resolve_name(name: str, device: str, model_dir: Path | None) -> str:
    """``name``, or for ``auto`` what the rule picks for ``device`` and the model at ``model_dir``."""
    if name != "auto":
        return name
    chosen = choose_backend(detect_capabilities(device, model_dir))
    log.info("backend auto -> %s", chosen)
    return chosen


def attach_backend(model: SentenceTransformer, name: str, model_dir: Path) -> SentenceTransformer:
    """Make ``model.encode`` run through backend ``name`` (``auto`` resolved here), token-length batched.

    The torch module stack stays in place: it holds the tokenizer, the weights the fingerprint is
    computed from, and the post-pooling layers the fast path reuses.
    """
    spec = get_backend(resolve_name(name, str(model.device), model_dir))
    built = spec.build(model, model_dir)
    record_encoder_info(
        model, backend=spec.name, precision=built.precision, artifact=built.artifact, exported=built.exported
    )
    # the backend replaces this one model's encode (an instance attribute shadowing the method is the point)
    model.encode = functools.partial(_encode, model, built, spec.name)  # type: ignore[method-assign]
    return model


_PASS_THROUGH = {"prompt_name": None, "prompt": None, "output_value": "sentence_embedding", "precision": "float32"}


def _encode(
    model: SentenceTransformer,
    built: Built,
    backend: str,
    inputs: Any,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    convert_to_numpy: bool = True,
    convert_to_tensor: bool = False,
    normalize_embeddings: bool = False,
    **kwargs: Any,
) -> Any:
    """``SentenceTransformer.encode`` for text inputs, through the attached backend."""
    from sentence_transformers import SentenceTransformer

    unusual = {k: v for k, v in kwargs.items() if k not in _PASS_THROUGH or _PASS_THROUGH[k] != v}
    if unusual:
        if backend == "torch":
            return SentenceTransformer.encode(
                model,
                inputs,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                convert_to_numpy=convert_to_numpy,
                convert_to_tensor=convert_to_tensor,
                normalize_embeddings=normalize_embeddings,
                **kwargs,
            )
        raise SimtoolError(
            f"backend {backend!r} encodes plain texts only, got {', '.join(unusual)}; use backend='torch'"
        )
    check_batch_size(batch_size)
    single = isinstance(inputs, str)
    texts = [inputs] if single else list(inputs)
    model.eval()
    if texts:
        vectors = encode_sorted(model, built.runner, texts, batch_size, bool(show_progress_bar))
    else:
        vectors = np.zeros((0, model.get_embedding_dimension() or 0), dtype=np.float32)
    if normalize_embeddings:
        from simtool.pooling import normalize

        vectors = normalize(vectors)
    result: Any = vectors[0] if single else vectors
    if convert_to_tensor:
        import torch

        return torch.from_numpy(result).to(model.device)
    if not convert_to_numpy and not single:
        import torch

        return list(torch.from_numpy(vectors))
    return result


def backend_info(model: Encoder, model_fingerprint: str | None = None) -> dict[str, Any]:
    """What an index manifest should record: the backend, its precision and a fingerprint of what computes it.

    The fingerprint covers the backend name, its precision, the model's weights and any exported file,
    so two encoders with equal fingerprints produce the same vectors (to the backend's float rounding).
    ``model_fingerprint``: the model's, when the caller has it already (it hashes every weight).
    """
    from simtool import encoder

    info = encoder_info(model)
    spec = BACKENDS.get(info.backend)
    parts = [info.backend, info.precision, model_fingerprint or encoder.model_fingerprint(model), info.artifact or ""]
    return {
        "name": info.backend,
        "precision": info.precision,
        "fingerprint": hashlib.sha256("|".join(parts).encode()).hexdigest()[:16],
        "tolerance": None if spec is None else spec.tolerance,
        "exported": None if info.exported is None else str(info.exported),
    }
