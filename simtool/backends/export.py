"""``simtool export``: write an OpenVINO graph beside a normal sentence-transformers directory.

The output directory loads with plain sentence-transformers (torch) and with
``load_encoder(DIR, backend='openvino'|'openvino-int8')`` (or ``auto``), which reads ``openvino/`` and
needs no calibration. ``openvino/simtool_export.json`` records the backend, the source model's
fingerprint, the calibration data's sha256, each file's sha256 (checked at load) and the accuracy guard.

Accuracy guard: on the built-in STS sample (:data:`STS_SAMPLE`, 48 hand-scored pairs) the export must
not lower the cosine Spearman (×100) by more than ``max_drop`` against fp32 torch; the max 1 − cos
against fp32 is reported beside it. Past ``max_drop`` nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from simtool.atomic import atomic_dir, atomic_write_json
from simtool.backends.base import encode_sorted
from simtool.backends.registry import EXPORT_DIR, EXPORT_RECORD, get_backend
from simtool.errors import SimtoolError
from simtool.protocols import encoder_info
from simtool.validate import check_positive

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1] / "data"
STS_SAMPLE = DATA / "sts_sample.jsonl"
# Calibration defaults to other text than the guard's, so the guard is not scored on its own calibration.
DEFAULT_CALIBRATION = DATA / "python_reference.jsonl"
CALIBRATION_SIZE = 300
EXPORTABLE = {"openvino": "openvino_model", "openvino-int8": "openvino_model_qint8_quantized"}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation with average ranks for ties, ×100 (as MTEB reports it)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        return ((ends - (counts - 1) / 2.0)[inverse]).astype(np.float64)

    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    return float(np.corrcoef(ra, rb)[0, 1] * 100)


def read_sts_sample(path: Path = STS_SAMPLE) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([r["score"] for r in rows])


def calibration_sentences(path: Path | None, size: int = CALIBRATION_SIZE) -> tuple[list[str], dict[str, Any]]:
    """Up to ``size`` texts spread evenly over a corpus file (any format simtool reads), and their record."""
    from simtool.corpus import read_documents

    check_positive("calibration_size", size)
    source = DEFAULT_CALIBRATION if path is None else Path(path)
    texts = [d.encoded_text for d in read_documents(source)]
    if not texts:
        raise SimtoolError(f"{source}: no texts to calibrate on")
    picked = [texts[int(i)] for i in np.linspace(0, len(texts) - 1, min(size, len(texts))).round()]
    digest = hashlib.sha256("\n".join(picked).encode("utf-8")).hexdigest()
    return picked, {"source": "built-in" if path is None else str(source), "n": len(picked), "sha256": digest}


def accuracy_guard(model: Any, runner: Any, max_drop: float, batch_size: int = 64) -> dict[str, Any]:
    """Spearman on the STS sample, fp32 torch vs ``runner``; ``ok`` is whether the drop is within ``max_drop``."""
    from simtool.backends import BACKENDS

    s1, s2, gold = read_sts_sample()
    texts = s1 + s2
    fp32 = BACKENDS["torch"].build(model, Path()).runner
    ref = encode_sorted(model, fp32, texts, batch_size)
    got = encode_sorted(model, runner, texts, batch_size)
    n = len(s1)

    def cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)

    base, now = spearman(gold, cos(ref[:n], ref[n:])), spearman(gold, cos(got[:n], got[n:]))
    drop = base - now
    return {
        "pairs": n,
        "spearman_fp32": round(base, 4),
        "spearman": round(now, 4),
        "drop": round(drop, 4),
        "max_one_minus_cos": float(np.max(1 - cos(ref, got))),
        "max_drop": max_drop,
        "ok": bool(drop <= max_drop),
    }


def export_model(
    model: Any,
    backend: str,
    output: str | os.PathLike[str],
    *,
    calibration: str | os.PathLike[str] | None = None,
    calibration_size: int = CALIBRATION_SIZE,
    max_drop: float = 0.1,
    source: str | None = None,
) -> dict[str, Any]:
    """Export a torch-loaded encoder as ``backend`` into ``output``; returns the record written.

    Raises ``SimtoolError`` (and writes nothing) when the accuracy guard fails.
    """
    from simtool.encoder import model_fingerprint

    if backend not in EXPORTABLE:
        raise SimtoolError(f"backend must be one of {', '.join(EXPORTABLE)} to export, got {backend!r}")
    if max_drop < 0:
        raise SimtoolError(f"max_drop must be >= 0, got {max_drop}")
    get_backend(backend)  # a missing extra is a one-line error before any work
    import openvino

    from simtool.backends import ov_graph

    output = Path(output)
    if output.exists() and any(output.iterdir()) and not (output / "modules.json").exists():
        raise SimtoolError(f"{output}: exists and is not a model directory; choose an empty or new output")
    graph = ov_graph.convert(model)
    calib_record = None
    if backend == "openvino-int8":
        from simtool.backends.openvino_int8 import quantize

        sentences, calib_record = calibration_sentences(
            None if calibration is None else Path(calibration), calibration_size
        )
        log.info("calibrating int8 on %d texts", len(sentences))
        graph = quantize(model, graph, sentences)
    precision = "int8" if backend == "openvino-int8" else "f32"
    runner = ov_graph.make_runner(model, ov_graph.compile_graph(graph, "f32"), precision).runner
    guard = accuracy_guard(model, runner, max_drop)
    if not guard["ok"]:
        raise SimtoolError(
            f"{backend} export drops STS-sample Spearman by {guard['drop']:.3f} (> max_drop={max_drop}); "
            "nothing written: calibrate on your own corpus or raise max_drop"
        )
    with atomic_dir(output) as staging:
        model.save(str(staging))
        stem = EXPORTABLE[backend]
        files = ov_graph.save_graph(graph, staging / EXPORT_DIR, stem)
        layers = ov_graph.fast_path(list(model)).layers
        record = {
            "format": 1,
            "backend": backend,
            "graph": f"{stem}.xml",
            "files": files,
            "layers": None if layers is None else list(layers),
            "source_model": source or encoder_info(model).source,
            "source_fingerprint": model_fingerprint(model),
            "openvino_version": openvino.__version__,
            "calibration": calib_record,
            "guard": guard,
        }
        atomic_write_json(staging / EXPORT_DIR / EXPORT_RECORD, record)
    return record
