"""Adapters that put simtool inside RAG stacks; each one needs its extra (``pip install simtool[EXTRA]``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from simtool.errors import SimtoolError


class MissingExtraError(SimtoolError, ImportError):
    """An adapter's third-party package is absent; the message names the extra that installs it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise one line naming ``simtool[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{module} is not installed; install the extra with `pip install 'simtool[{extra}]'`"
        ) from None
