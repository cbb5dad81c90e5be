"""Dynamic batching: concurrent requests packed into one encode, as text-embeddings-inference does.

Requests queue with their token counts. One worker thread takes the oldest request, then keeps
adding queued ones while the batch stays within ``max_batch_tokens``, waiting at most
``max_wait_ms`` after the first for more to arrive; the whole batch is one encoder call. A request
that does not fit waits for the next batch (a request bigger than the budget goes alone). While an
encode runs the queue fills, so under load batches form without waiting at all.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from simtool.errors import SimtoolError
from simtool.serve.metrics import Metrics
from simtool.validate import check_positive

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str], "int | None"], np.ndarray]


class QueueFullError(SimtoolError):
    """The batcher's queue holds ``max_queue`` requests already (HTTP 429)."""


@dataclass
class _Job:
    texts: list[str]
    tokens: int
    dimensions: int | None
    future: Future[np.ndarray] = field(default_factory=Future)


class DynamicBatcher:
    """Packs submitted jobs into encodes on one worker thread.

    ``encode(texts, dimensions)`` returns ``(len(texts), d)`` float32. Jobs asking for different
    ``dimensions`` never share a batch. ``enabled=False`` encodes each request alone (the baseline).
    """

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch_tokens: int = 16_384,
        max_wait_ms: float = 2.0,
        max_queue: int = 1024,
        enabled: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        check_positive("max_batch_tokens", max_batch_tokens)
        if max_wait_ms < 0:
            raise SimtoolError(f"max_wait_ms must be ≥ 0, got {max_wait_ms}")
        check_positive("max_queue", max_queue)
        self.encode = encode
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.enabled = enabled
        self.metrics = metrics or Metrics()
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="simtool-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, texts: Sequence[str], tokens: int, dimensions: int | None = None) -> Future[np.ndarray]:
        """Queue one request; the future gets its ``(len(texts), d)`` rows. Raises :class:`QueueFullError`."""
        job = _Job(list(texts), tokens, dimensions)
        with self._cond:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"the encode queue is full ({self.max_queue} requests waiting); retry later")
            self._queue.append(job)
            self.metrics.set_queue_depth(len(self._queue))
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Finish every queued job, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            if self.enabled:
                tokens = batch[0].tokens
                deadline = time.monotonic() + self.max_wait
                while True:
                    while self._queue:
                        nxt = self._queue[0]
                        if nxt.dimensions != batch[0].dimensions or tokens + nxt.tokens > self.max_batch_tokens:
                            break
                        batch.append(self._queue.popleft())
                        tokens += nxt.tokens
                    full = bool(self._queue)  # the next one did not fit: no point waiting
                    remaining = deadline - time.monotonic()
                    if full or remaining <= 0 or self._stopping:
                        break
                    self._cond.wait(remaining)
            self.metrics.set_queue_depth(len(self._queue))
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            texts = [t for job in batch for t in job.texts]
            try:
                vectors = self.encode(texts, batch[0].dimensions)
            except BaseException as e:  # every waiting request learns of the failure; the worker lives on
                log.exception("encode of a batch of %d texts failed", len(texts))
                for job in batch:
                    job.future.set_exception(e)
                continue
            self.metrics.batch(len(batch), len(texts), sum(job.tokens for job in batch))
            row = 0
            for job in batch:
                job.future.set_result(vectors[row : row + len(job.texts)])
                row += len(job.texts)
