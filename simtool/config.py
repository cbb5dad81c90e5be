"""Where simtool keeps its state by default."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "python_reference.jsonl"
"""621 prose paragraphs of Python's help topics (``pydoc_data``, PSF licence), BEIR jsonl layout."""


def simtool_home() -> Path:
    """``$SIMTOOL_HOME``, else ``~/.simtool``."""
    return Path(os.environ.get("SIMTOOL_HOME") or Path.home() / ".simtool").expanduser()


def default_index_dir() -> Path:
    """The index that ``simtool search`` uses when no ``--index-dir`` is given."""
    return simtool_home() / "index"


def resolve_index_dir(index_dir: str | os.PathLike[str] | None) -> Path:
    """``index_dir`` as a path, or :func:`default_index_dir` for ``None``."""
    return Path(index_dir) if index_dir is not None else default_index_dir()
