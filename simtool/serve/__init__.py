"""``simtool serve``: an OpenAI-compatible embedding service with dynamic batching (extra ``simtool[serve]``)."""

from __future__ import annotations

from simtool.serve.config import ServeConfig
from simtool.serve.server import serve

__all__ = ["ServeConfig", "serve"]
