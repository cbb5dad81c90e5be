"""User-facing errors: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class SimtoolError(Exception):
    """Bad input or state that the user can fix; the message is one line."""


class CorpusError(SimtoolError):
    """A corpus or query file cannot be read; the message names file and line."""


class ModelNotFoundError(SimtoolError):
    """A model cannot be resolved offline."""


class IndexDirError(SimtoolError):
    """An index directory is missing, corrupt or inconsistent with the request."""


class ParameterError(SimtoolError, ValueError):
    """An argument out of range or of the wrong form; the message names the parameter and the value given.

    Also a ``ValueError``, so Python callers that catch the built-in for bad arguments keep working.
    """
