"""Which encode backend may write to or query an index built by another, and what ``auto`` means there.

An index's manifest records the backend that built it (:func:`simtool.backends.backend_info`); a
manifest written before backends existed is read as fp32 ``torch``. Each backend states a tolerance: the
max ``1 - cos`` against fp32 torch its tests hold it to. The index's tolerance is its build backend's.

Rule: a backend may encode for an index when its tolerance is at most the index's, floored at
:data:`EXACT` (float rounding: ``torch`` and ``openvino`` fp32 are interchangeable). So a query never adds
more numeric drift than the index's own documents carry: fp32 queries on an int8 or bf16 index are
fine, bf16 or int8 queries on an fp32 index are refused (rebuild the index with that backend instead).

- An explicit backend other than the build backend: a warning once per process, then proceed when
  within the rule; otherwise a one-line :class:`SimtoolError` naming ``backend``.
- ``auto``: this machine's ``auto`` choice when within the rule, else the build backend when installed
  here, else ``torch`` (fp32 is within every index's tolerance).
- ``None`` (the library default): the build backend, or ``torch`` when it is not installed here.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from simtool.backends.registry import BACKENDS, backend_names, choose_backend, detect_capabilities, get_backend
from simtool.errors import SimtoolError
from simtool.protocols import Encoder, encoder_info

log = logging.getLogger(__name__)

EXACT = 1e-5  # 1 - cos of float rounding alone: backends at or below it give the same vectors for search
LEGACY = {"name": "torch", "precision": "float32", "fingerprint": None, "tolerance": 1e-6, "exported": None}

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def recorded_backend(record: dict[str, Any] | None) -> dict[str, Any]:
    """A manifest's backend record; an empty or absent one (older manifests) is fp32 ``torch``, marked ``assumed``."""
    if not record:
        return {**LEGACY, "assumed": True}
    return dict(record)


def tolerance(name: str, record: dict[str, Any] | None = None) -> float:
    """The stated max ``1 - cos`` of backend ``name``; a name this simtool does not know uses ``record``'s."""
    spec = BACKENDS.get(name)
    if spec is not None:
        return spec.tolerance
    if record is not None and isinstance(record.get("tolerance"), (int, float)):
        return float(record["tolerance"])
    raise SimtoolError(f"the index was built with backend {name!r}, unknown to this simtool; upgrade simtool")


def within_tolerance(built: dict[str, Any], name: str) -> bool:
    """Whether backend ``name`` may encode for an index built as ``built`` records (module docstring)."""
    return tolerance(name) <= max(tolerance(built["name"], built), EXACT)


def check(
    built: dict[str, Any], requested: str | None, *, device: str = "cpu", model_dir: Path | None = None
) -> dict[str, Any]:
    """What encoding for this index with ``requested`` would do, without loading anything.

    Returns ``{"requested", "resolved", "within_tolerance", "note"}``; ``resolved`` is ``None`` when refused.
    """
    name = str(built["name"])
    if requested is None:
        here = name in BACKENDS and BACKENDS[name].available()
        resolved = name if here else "torch"
        note = "the build backend" if here else f"{name} is not installed here; fp32 torch instead"
        return _result(requested, resolved, True, note)
    if requested != "auto":
        if requested not in BACKENDS:
            raise SimtoolError(f"unknown backend {requested!r}; choose one of {', '.join(backend_names())}")
        ok = within_tolerance(built, requested)
        note = (
            "the build backend"
            if requested == name
            else f"max 1 - cos {tolerance(requested):.0e} vs the index's {tolerance(name, built):.0e}"
        )
        return _result(requested, requested if ok else None, ok, note)
    machine = choose_backend(detect_capabilities(device, model_dir))
    if within_tolerance(built, machine):
        return _result(requested, machine, True, f"auto -> {machine} on this machine")
    if name in BACKENDS and BACKENDS[name].available():
        return _result(requested, name, True, f"auto -> {machine} is past the index's tolerance; the build backend")
    return _result(requested, "torch", True, f"auto -> {machine} is past the index's tolerance; fp32 torch")


def _result(requested: str | None, resolved: str | None, ok: bool, note: str) -> dict[str, Any]:
    return {"requested": requested, "resolved": resolved, "within_tolerance": ok, "note": note}


def resolve(
    built_record: dict[str, Any] | None, requested: str | None, *, device: str = "cpu", model_dir: Path | None = None
) -> str:
    """The backend to load for an index built as ``built_record`` says; refuses past the tolerance (one line)."""
    built = recorded_backend(built_record)
    refuse_past(built, requested)
    resolved = check(built, requested, device=device, model_dir=model_dir)["resolved"]
    if resolved != built["name"]:
        message = (
            f"the index was built with backend {built['name']!r}; encoding with {resolved!r} "
            f"(within its tolerance, max 1 - cos {tolerance(built['name'], built):.0e})"
        )
        if requested is None or requested == "auto":
            log.info(message)  # chosen for the user within the rule: nothing to act on
        else:
            warn_once((str(built.get("fingerprint") or built["name"]), resolved), message)
    return str(resolved)


def refuse_past(built_record: dict[str, Any] | None, requested: str | None) -> None:
    """Fail fast (before any model is loaded or row encoded) on a backend the index's tolerance refuses.

    Only an explicit name can be refused (``auto`` and ``None`` always resolve), so this needs no device.
    """
    if requested in (None, "auto"):
        return
    get_backend(str(requested))  # unknown name or missing extra: its own one-line error first
    built = recorded_backend(built_record)
    if not within_tolerance(built, str(requested)):
        raise SimtoolError(
            f"backend={requested!r} may move cosines by up to {tolerance(str(requested)):.0e}, past the "
            f"{tolerance(built['name'], built):.0e} of backend {built['name']!r} that built the index; "
            f"use backend={built['name']!r} or rebuild the index with backend={requested!r}"
        )


def check_loaded(built_record: dict[str, Any] | None, encoder: Encoder, model_fingerprint: str | None = None) -> None:
    """Refuse an already loaded encoder past the index's tolerance; warn once when its numerics differ.

    ``model_fingerprint``: the encoder's model fingerprint, when the caller computed it already.
    """
    from simtool.backends.registry import backend_info

    built = recorded_backend(built_record)
    name = encoder_info(encoder).backend
    if not within_tolerance(built, name):
        raise SimtoolError(
            f"the encoder runs backend {name!r} (max 1 - cos {tolerance(name):.0e}), past the "
            f"{tolerance(built['name'], built):.0e} of backend {built['name']!r} that built the index; "
            f"load it with backend={built['name']!r}"
        )
    if not built.get("fingerprint") or name != built["name"]:
        return
    info = backend_info(encoder, model_fingerprint)
    if info["fingerprint"] != built["fingerprint"]:
        warn_once(
            (str(built["fingerprint"]), str(info["fingerprint"])),
            f"backend {info['name']!r} fingerprint {info['fingerprint']} differs from the index's "
            f"{built['fingerprint']} (another export or device); within its tolerance",
        )


def warn_once(key: tuple[str, str], message: str) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


def describe(built_record: dict[str, Any] | None, requested: str | None, model: str) -> dict[str, Any]:
    """:func:`check` for ``simtool index info``: never raises for an unknown name or a model missing here."""
    built = recorded_backend(built_record)
    model_dir: Path | None = None
    device = "cpu"
    if requested == "auto":
        from simtool.encoder import default_device, resolve_model_path

        device = default_device()
        try:
            model_dir = resolve_model_path(model)
        except SimtoolError:
            model_dir = None  # the model is not on this machine: auto as for a model without an export
    try:
        result = check(built, requested, device=device, model_dir=model_dir)
    except SimtoolError as e:
        return _result(requested, None, False, str(e))
    if result["resolved"] is not None and result["resolved"] in BACKENDS:
        result["available"] = BACKENDS[result["resolved"]].available()
    return result
