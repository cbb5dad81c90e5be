"""The index manifest: the commit point that makes an index directory self-describing.

It records how to encode a query exactly as the documents were (model, fingerprint,
pooling, encode backend, reducers), how new segments are indexed (factory, metric, dim, search parameters),
the generation's segments and tombstones, and the size and sha256 of every file they use.
``manifest.json`` is replaced by one atomic rename per commit; a copy of each generation a
reader may still hold is kept under ``commits/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simtool.atomic import atomic_write_json
from simtool.errors import IndexDirError
from simtool.segments import SegmentInfo

FORMAT = "simtool-index"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
COMMITS_DIR = "commits"


@dataclass
class ModelInfo:
    name_or_path: str
    fingerprint: str
    pooling: str
    max_seq_length: int | None
    dim: int


@dataclass
class Manifest:
    model: ModelInfo
    dim: int
    metric: str  # "ip" or "l2"
    factory: str
    count: int  # live documents
    factory_spec: str = ""  # what was asked for ("auto" or a factory string), reused when the index is rebuilt
    search_params: dict[str, int] = field(default_factory=dict)
    reducers: list[dict[str, Any]] = field(default_factory=list)  # config + "file", applied in order
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> {"sha256", "bytes"}
    generation: int = 0
    segments: list[SegmentInfo] = field(default_factory=list)
    created_at: str = ""
    updated_at: str = ""
    simtool_version: str = ""
    # how documents longer than the model's window were encoded (simtool.chunking); {} = truncated.
    # Index writes re-encode new documents the same way, so one index never mixes methods.
    long_text: dict[str, Any] = field(default_factory=dict)
    # the encode backend that built it (simtool.backends.backend_info: name, precision, fingerprint,
    # tolerance); {} in manifests older than backends = fp32 torch (simtool.backends.compat)
    backend: dict[str, Any] = field(default_factory=dict)
    # {"file", "factory"}: the trained, empty FAISS index of ``factory`` that new segments of that
    # factory are filled from, so one index trains its quantizer once and segments can merge
    # their IVF lists without re-encoding; {} when the factory needs no training.
    trained: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["model"] = ModelInfo(**data["model"])
        data["segments"] = [SegmentInfo(**seg) for seg in data.get("segments", [])]
        return cls(**data)

    def save(self, directory: Path) -> None:
        """Publish this generation: its history copy first, then the commit point, each atomically."""
        (directory / COMMITS_DIR).mkdir(exist_ok=True)
        atomic_write_json(commit_path(directory, self.generation), self.to_dict())
        atomic_write_json(directory / MANIFEST_NAME, self.to_dict())

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise IndexDirError(f"{directory}: no index here; build one with `simtool index build CORPUS`")
        if not path.exists():
            raise IndexDirError(f"{directory}: not a simtool index (no {MANIFEST_NAME})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise IndexDirError(f"{path}: corrupt manifest ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexDirError(f"{path}: not a simtool index manifest")
        if data.get("format_version") == 1:
            raise IndexDirError(
                f"{directory}: an index of format 1 (one monolithic FAISS file); "
                f"run `simtool index upgrade {directory}` to convert it in place"
            )
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexDirError(
                f"{path}: index format version {data.get('format_version')} is not supported "
                f"(this simtool reads version {FORMAT_VERSION}); rebuild the index"
            )
        try:
            return cls.from_dict(data)
        except (TypeError, KeyError) as e:
            raise IndexDirError(f"{path}: malformed manifest ({e})") from None

    @classmethod
    def load_commit(cls, directory: Path, generation: int) -> Manifest:
        data = json.loads(commit_path(directory, generation).read_text(encoding="utf-8"))
        return cls.from_dict(data)

    def record_file(self, directory: Path, name: str) -> None:
        self.files[name] = {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}

    def verify_file(self, directory: Path, name: str) -> Path:
        """The file's path, after checking that its size and sha256 match the manifest."""
        path = directory / name
        expected = self.files.get(name)
        if expected is None:
            raise IndexDirError(f"{directory / MANIFEST_NAME}: no checksum recorded for {name}")
        if not path.exists():
            raise IndexDirError(f"{path}: missing from the index directory")
        if path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            raise IndexDirError(f"{path}: checksum mismatch, the file is corrupted; rebuild the index")
        return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def commit_path(directory: Path, generation: int) -> Path:
    return directory / COMMITS_DIR / f"{generation:010d}.json"


def committed_generations(directory: Path) -> list[int]:
    """Generations with a history copy under ``commits/``, ascending."""
    out = []
    for p in (directory / COMMITS_DIR).glob("*.json"):
        try:
            out.append(int(p.stem))
        except ValueError:
            continue
    return sorted(out)
