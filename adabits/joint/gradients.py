"""The one gradient all-reduce of a joint step: every per-bit backward accumulates locally (under DDP's
`no_sync`), then all gradients meet once, flattened into a few large buckets (adabits.engine.distributed's
docstring says why DDP's own reducer is not used)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..errors import DistributedError

#: the largest bucket of flattened gradients one all_reduce moves
BUCKET_BYTES = 256 << 20


def _buckets(params: list[nn.Parameter], max_bytes: int) -> list[list[nn.Parameter]]:
    """Consecutive parameters of one dtype and device, at most max_bytes each (a bigger parameter stands alone)."""
    buckets: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        last = buckets[-1] if buckets else None
        if last is None or (last[0].dtype, last[0].device) != (p.dtype, p.device) or size + nbytes > max_bytes:
            buckets.append([p])
            size = nbytes
        else:
            last.append(p)
            size += nbytes
    return buckets


class GradientAllReduce:
    """One all_reduce per bucket of flattened gradients: the only gradient communication of a step.

    Each process weights its gradients by its share of the global batch before the sum, so the result
    is the gradient of the mean loss over the global batch, also for a last batch split unevenly.
    A parameter without a gradient (unused at every trained bit-width) counts as zero in the sum and
    keeps `grad=None`, as in a single process; the first call checks that every rank agrees on which
    parameters have gradients (a data-dependent set would make the processes silently diverge).
    """

    def __init__(self, params: Iterable[nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.buckets = _buckets(self.params, bucket_bytes)
        self.checked = False

    def __call__(self, share: float) -> None:
        world = dist.get_world_size()
        for bucket in self.buckets:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in bucket]
            present = [p.grad is not None for p in bucket]
            flags = torch.tensor(present, dtype=bucket[0].dtype, device=bucket[0].device)
            flat = torch.cat([_flatten_dense_tensors(grads).mul_(share), flags])
            dist.all_reduce(flat)
            if not self.checked:
                self._check(flat[-len(bucket):], present, world)
            for p, reduced in zip(bucket, _unflatten_dense_tensors(flat[:-len(bucket)], grads)):
                if p.grad is not None:
                    p.grad.copy_(reduced)
        self.checked = True

    @staticmethod
    def _check(counts: torch.Tensor, present: list[bool], world: int) -> None:
        for count, mine in zip(counts.tolist(), present):
            if round(count) != (world if mine else 0):
                raise DistributedError("the processes disagree on which parameters received gradients in this step; "
                                       "distributed training needs the same used parameters on every rank")


