"""The ``simtool`` command line: a thin layer over the library (installed as ``simtool.cli``)."""

from simtool.cli.app import app, main

__all__ = ["app", "main"]
