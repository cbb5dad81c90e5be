"""``openvino`` (fp32, exact: 1 − cos ≤ 1e-5 against torch) and ``openvino-bf16`` (bf16 inference hint).

OpenVINO reaches about twice torch's fp32 FLOP/s on CPUs where torch's linear layers go through
MKL's AVX2 path. The graph is converted at load (a few seconds) unless ``simtool export`` wrote one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from simtool.backends.base import BackendSpec, Built
from simtool.backends.registry import register

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def _build(model: SentenceTransformer, model_dir: Path, precision: str) -> Built:
    from simtool.backends import ov_graph

    exported = ov_graph.load_exported(model, model_dir, "openvino")
    if exported is not None:
        graph, record = exported
        artifact = record["files"][record["graph"].replace(".xml", ".bin")]
        return ov_graph.make_runner(
            model, ov_graph.compile_graph(graph, precision), precision, artifact=artifact, exported=model_dir
        )
    return ov_graph.make_runner(model, ov_graph.compile_graph(ov_graph.convert(model), precision), precision)


def build_f32(model: SentenceTransformer, model_dir: Path) -> Built:
    return _build(model, model_dir, "f32")


def build_bf16(model: SentenceTransformer, model_dir: Path) -> Built:
    return _build(model, model_dir, "bf16")


OPENVINO = ("openvino",)
register(BackendSpec("openvino", build_f32, 1e-5, "OpenVINO fp32 (exact)", extra="openvino", modules=OPENVINO))
register(BackendSpec("openvino-bf16", build_bf16, 5e-3, "OpenVINO, bf16 hint", extra="openvino", modules=OPENVINO))
