"""Training recipes: each one is a small module (its data columns, its loss) plus one :func:`register` call.

The loop, checkpoints, resume, DDP and evaluation in :mod:`simtool.training.loop` are recipe-agnostic; they
look a recipe up here by name (``--recipe``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simtool.errors import SimtoolError


@dataclass(frozen=True)
class Recipe:
    """What makes a recipe: which columns it reads from a file and which loss trains on them.

    ``columns(path, fmt, names)`` validates a training file (``names``: its header or first JSON object's keys,
    None for ``.txt``) and returns the columns to read, raising :class:`~simtool.errors.CorpusError` naming the
    file otherwise. ``loss_class()`` returns the loss module class (imported lazily: torch). ``texts_per_row``
    counts the encoded texts of one row (for sentences/s).

    Recipes whose model is more than a sentence encoder also set: ``build_model(source, device)`` (the model to
    train from a model name/directory or a checkpoint; default :func:`simtool.encoder.load_encoder`),
    ``inputs(model, rows, config, step)`` → ``(features list, teacher texts)`` (default: each column tokenised by
    ``model.preprocess``, the teacher reads the first column), ``export(output_dir)`` (run on the published
    final model, e.g. to save a retrieval-only copy) and ``probe(model, features)`` (a scalar reaching every
    parameter the loss trains, when some are used outside the forward; DDP freezes the others).
    """

    name: str
    columns: Callable[[Path, str, list[str] | None], tuple[str, ...]]
    loss_class: Callable[[], Any]
    texts_per_row: Callable[[Sequence[str]], int]
    build_model: Callable[[str | None, str], Any] | None = None
    inputs: Callable[[Any, list[tuple[str, ...]], Any, int], tuple[list[dict[str, Any]], list[str]]] | None = None
    export: Callable[[Path], None] | None = None
    probe: Callable[[Any, dict[str, Any]], Any] | None = None


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add ``recipe`` to the registry under its name."""
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``; :class:`SimtoolError` naming the choices otherwise."""
    if name not in RECIPES:
        raise SimtoolError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


# Registration order is the order of the choices in messages.
from simtool.training.recipes import simcse_unsup, simcse_sup, roformer_sim  # noqa: E402, F401, I001
