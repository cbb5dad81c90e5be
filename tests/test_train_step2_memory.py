"""Step 2 of the gradient cache (loss and dL/dh over the whole batch) runs in row chunks: its peak memory at
B = 2048, b = 32 stays below what the full (B, B) logit matrix alone would need.

Memory is measured by tracking every tensor that torch allocates while step 2 runs (a dispatch mode that
adds each new storage's bytes and subtracts them when the storage is freed): the peak of live bytes.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simtool.grad_cache import loss_and_embedding_grads
from simtool.losses import contrastive_rows_loss


class LiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen:
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, storage.nbytes())
        return out


def rows_loss(columns, labels, offset, begin, end, n):  # type: ignore[no-untyped-def]
    a, p = (torch.nn.functional.normalize(c, dim=-1) for c in columns)
    return {"contrastive": contrastive_rows_loss(a, p, None, offset=offset, begin=begin, end=end, n=n, margin=0.1)}


@pytest.mark.timeout(60)
def test_chunked_step2_peak_memory_is_below_the_full_logit_matrix() -> None:
    big, b, d = 2048, 32, 8
    g = torch.Generator().manual_seed(0)
    columns = [torch.randn(big, d, generator=g), torch.randn(big, d, generator=g)]
    with LiveBytes() as meter:
        parts, grads = loss_and_embedding_grads(rows_loss, columns, None, b, gather=False)
    full_logits = big * big * 4  # float32 (B, B)
    assert meter.peak < full_logits / 4, (meter.peak, full_logits)

    # The chunked value and gradients are those of the unchunked loss (float64 reference).
    ref = [c.double().requires_grad_() for c in columns]
    loss = rows_loss(ref, None, 0, 0, big, big)["contrastive"]
    loss.backward()
    assert parts["contrastive"] == pytest.approx(float(loss.detach()), rel=1e-5)
    for got, want in zip(grads, ref, strict=True):
        assert torch.allclose(got.double(), want.grad, rtol=1e-4, atol=1e-8)
    # And one unchunked pass does allocate the (B, B) block: the meter can see it.
    with LiveBytes() as unchunked:
        loss_and_embedding_grads(rows_loss, columns, None, big, gather=False)
    assert unchunked.peak >= full_logits
