"""Encode backends: one module per backend, each registering itself once; :mod:`.registry` has the rule.

``load_encoder(..., backend=NAME)`` attaches one; ``backend_info(model)`` says which, for manifests.
"""

from __future__ import annotations

from simtool.backends import openvino_fp32, openvino_int8, torch_bf16, torch_fp32  # noqa: F401 - registrations
from simtool.backends.registry import (
    BACKENDS,
    Capabilities,
    attach_backend,
    backend_info,
    backend_names,
    choose_backend,
    detect_capabilities,
    get_backend,
    register,
)

__all__ = [
    "BACKENDS",
    "Capabilities",
    "attach_backend",
    "backend_info",
    "backend_names",
    "choose_backend",
    "detect_capabilities",
    "get_backend",
    "register",
]
