"""Prometheus text exposition (format 0.0.4) for the service, without a client library: a few thread-safe series."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{v}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = list(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.n += 1


class Metrics:
    """Request counts and latencies per route and status, encode batch sizes (inputs and tokens), queue depth."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str], _Histogram] = {}
        self.batch_inputs = _Histogram(BATCH_BUCKETS)
        self.batch_tokens = _Histogram([b * 16 for b in BATCH_BUCKETS])
        self.batch_requests = _Histogram(BATCH_BUCKETS)
        self.queue_depth = 0
        self.rejected: dict[tuple[str], int] = defaultdict(int)

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, method, str(status))] += 1
            self.latency.setdefault((route,), _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, requests: int, inputs: int, tokens: int) -> None:
        with self._lock:
            self.batch_requests.observe(requests)
            self.batch_inputs.observe(inputs)
            self.batch_tokens.observe(tokens)

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_depth = depth

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[(reason,)] += 1

    def render(self) -> str:
        with self._lock:
            out: list[str] = []
            out += [
                "# HELP simtool_requests_total HTTP requests by route, method and status.",
                "# TYPE simtool_requests_total counter",
            ]
            for (route, method, status), n in sorted(self.requests.items()):
                out.append(
                    f"simtool_requests_total{_labels(('route', 'method', 'status'), (route, method, status))} {n}"
                )
            out += [
                "# HELP simtool_request_duration_seconds Time from request to response.",
                "# TYPE simtool_request_duration_seconds histogram",
            ]
            for key, h in sorted(self.latency.items()):
                out += self._histogram("simtool_request_duration_seconds", ("route",), key, h)
            for name, help_, h in (
                ("simtool_batch_requests", "Requests packed into one encode.", self.batch_requests),
                ("simtool_batch_inputs", "Texts in one encode.", self.batch_inputs),
                ("simtool_batch_tokens", "Tokens in one encode.", self.batch_tokens),
            ):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
                out += self._histogram(name, (), (), h)
            out += [
                "# HELP simtool_queue_depth Requests waiting for an encode.",
                "# TYPE simtool_queue_depth gauge",
                f"simtool_queue_depth {self.queue_depth}",
            ]
            out += [
                "# HELP simtool_rejected_total Requests refused before encoding, by reason.",
                "# TYPE simtool_rejected_total counter",
            ]
            for (reason,), n in sorted(self.rejected.items()):
                out.append(f'simtool_rejected_total{{reason="{reason}"}} {n}')
            return "\n".join(out) + "\n"

    @staticmethod
    def _histogram(name: str, names: Sequence[str], values: Sequence[str], h: _Histogram) -> list[str]:
        lines, cumulative = [], 0
        for bound, count in zip([*h.buckets, float("inf")], h.counts, strict=True):
            cumulative += count
            le = 'le="+Inf"' if bound == float("inf") else f'le="{bound:g}"'
            lines.append(f"{name}_bucket{_labels(names, values, le)} {cumulative}")
        lines.append(f"{name}_sum{_labels(names, values)} {h.sum:.6f}")
        lines.append(f"{name}_count{_labels(names, values)} {h.n}")
        return lines
