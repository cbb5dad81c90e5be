"""Running simtool's work on Ray clusters (encoding, index building) and under ``torchrun`` (training).

Ray is optional (``pip install simtool[ray]``); :func:`require_ray` turns its absence into one line.
"""

from __future__ import annotations

from simtool.distributed.ray_encode import RayOptions, encode_file_ray, ray_dataset, require_ray

__all__ = ["RayOptions", "encode_file_ray", "ray_dataset", "require_ray"]
