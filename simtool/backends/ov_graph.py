"""OpenVINO plumbing shared by the ``openvino*`` backends: convert, compile, run, and exported files.

The graph computes the token embeddings the fast path pools (the last layer, or the mean of the
layers a :class:`~simtool.pooling.LayerPooling` names); pooling, Dense and Normalize then run in
numpy (:func:`simtool.pooling.fast_path`), identical for every backend.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simtool.backends.base import Built, numpy_inputs
from simtool.backends.registry import EXPORT_DIR, read_export_record
from simtool.errors import SimtoolError
from simtool.pooling import FastPath, fast_path

if TYPE_CHECKING:
    import openvino as ov
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXAMPLE_TEXTS = ["a short text", "a somewhat longer example text so that the batch has padding in it"]


def input_names(model: SentenceTransformer) -> list[str]:
    params = inspect.signature(model[0].auto_model.forward).parameters  # type: ignore[union-attr]
    return [n for n in INPUTS if n in params and n in model.tokenizer.model_input_names]


def convert(model: SentenceTransformer) -> ov.Model:
    """The transformer as an OpenVINO graph with dynamic batch and length, output ``(b, t, h)`` float32."""
    import openvino
    import torch

    path = fast_path(list(model))
    names = input_names(model)
    graph = _TokenGraph(model[0].auto_model, path.layers, names).eval()
    features = model.preprocess(EXAMPLE_TEXTS)
    example = {n: features[n] for n in names}
    with torch.no_grad():
        return openvino.convert_model(graph, example_input=example)


def _token_graph_class() -> type:
    import torch

    class TokenGraph(torch.nn.Module):
        def __init__(self, auto_model: Any, layers: tuple[int, ...] | None, names: list[str]) -> None:
            super().__init__()
            self.auto_model = auto_model
            self.layers = layers
            self.names = names

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            out = self.auto_model(**kwargs, output_hidden_states=self.layers is not None, return_dict=True)
            if self.layers is None:
                return out.last_hidden_state
            return torch.stack([out.hidden_states[i] for i in self.layers]).mean(0)

    return TokenGraph


def _TokenGraph(auto_model: Any, layers: tuple[int, ...] | None, names: list[str]) -> Any:
    return _token_graph_class()(auto_model, layers, names)


def compile_graph(graph: ov.Model, precision: str) -> Any:
    """Compile for the CPU. ``precision``: ``f32`` (exact) or ``bf16``.

    Thread policy (shared machines): as many inference threads as torch uses, and no core pinning, so
    other processes on the cores are not locked out and ours do not fight them for pinned cores.
    """
    import openvino
    import torch

    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "ENABLE_CPU_PINNING": False,
    }
    return openvino.Core().compile_model(graph, "CPU", config)


def make_runner(model: SentenceTransformer, compiled: Any, precision: str, **built: Any) -> Built:
    path: FastPath = fast_path(list(model))
    names = [p.get_any_name() for p in compiled.inputs]

    def run(features: dict[str, Any]) -> np.ndarray:
        # One infer request per call: a compiled model is shared, a request is not thread-safe.
        request = compiled.create_infer_request()
        result = request.infer(numpy_inputs(features, names))
        tokens = next(iter(result.values()))
        return path(np.asarray(tokens), features["attention_mask"].numpy())

    return Built(runner=run, precision=precision, **built)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_exported(model: SentenceTransformer, model_dir: Path, backend: str) -> tuple[ov.Model, dict[str, Any]] | None:
    """The exported graph for ``backend`` in ``model_dir`` after checking its files, or ``None`` if none.

    A missing or altered file, or a graph built for other pooling layers, is a one-line ``SimtoolError``.
    """
    import openvino

    record = read_export_record(model_dir)
    if record is None or record.get("backend") != backend:
        return None
    where = model_dir / EXPORT_DIR
    for name, digest in dict(record.get("files", {})).items():
        f = where / name
        if not f.is_file():
            raise SimtoolError(f"{f}: exported file is missing; export the model again with `simtool export`")
        if file_sha256(f) != digest:
            raise SimtoolError(f"{f}: exported file is corrupt (sha256 differs); export the model again")
    layers = fast_path(list(model)).layers
    recorded = record.get("layers")
    if (None if recorded is None else tuple(recorded)) != layers:
        raise SimtoolError(
            f"{where}: exported for pooling layers {recorded}, but this pooling needs {layers}; "
            "load it without pooling= or export again"
        )
    try:
        graph = openvino.Core().read_model(where / record["graph"])
    except Exception as e:  # OpenVINO raises its own RuntimeError subclasses with multi-line text
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SimtoolError(f"{where / record['graph']}: cannot read exported graph ({first})") from None
    return graph, record


def save_graph(graph: ov.Model, directory: Path, stem: str) -> dict[str, str]:
    """Write ``stem.xml``/``stem.bin`` (weights kept as they are: no fp16 compression); returns their sha256s."""
    import openvino

    directory.mkdir(parents=True, exist_ok=True)
    openvino.save_model(graph, str(directory / f"{stem}.xml"), compress_to_fp16=False)
    return {f"{stem}{ext}": file_sha256(directory / f"{stem}{ext}") for ext in (".xml", ".bin")}
