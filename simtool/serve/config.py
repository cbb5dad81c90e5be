"""What ``simtool serve`` runs with: the model source, the batching bounds, the request limits, the key."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from simtool.errors import SimtoolError
from simtool.validate import check_positive


@dataclass(frozen=True)
class ServeConfig:
    """``index_dir`` (its model and reducers) or ``model``; limits are per request. ``batching=False`` is the
    one-request-one-encode baseline. ``backend``: the encode backend (``None``: an index's own, else ``torch``;
    on an index, within its tolerance, :mod:`simtool.backends.compat`)."""

    index_dir: str | None = None
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_inputs: int = 2048
    max_text_chars: int = 32_768
    max_body_bytes: int = 8 * 2**20
    max_k: int = 1000
    batching: bool = True
    workers: int = 1
    encode_batch_size: int = 64
    device: str | None = None
    backend: str | None = None

    def check(self) -> None:
        for name in (
            "max_batch_tokens",
            "max_queue",
            "max_inputs",
            "max_text_chars",
            "max_body_bytes",
            "max_k",
            "workers",
        ):
            check_positive(name, getattr(self, name))
        if self.max_wait_ms < 0:
            raise SimtoolError(f"max_wait_ms must be ≥ 0, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise SimtoolError(f"port must be in 0..65535, got {self.port}")
        if self.index_dir is not None and self.model is not None:
            raise SimtoolError("pass index_dir or model, not both: an index serves its own model")
        if not self.api_key and not is_loopback(self.host):
            raise SimtoolError(
                f"host {self.host!r} is not a loopback address; without api_key the service binds to 127.0.0.1 only "
                "(set api_key, or SIMTOOL_API_KEY, to listen on other interfaces)"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        data: dict[str, Any] = json.loads(text)
        return cls(**data)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
