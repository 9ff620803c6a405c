"""Evaluation of every bit-width over a loader: the one loop behind `Trainer.evaluate` and `adabits test`."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

import adabits

from ..quant.bitwidth import Bits
from .metrics import MeterSet


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], bits_list: Sequence[Bits],
             topk: Sequence[int], *, criterion: nn.Module | None = None, device: torch.device | str = "cpu",
             forward: nn.Module | None = None) -> MeterSet:
    """Loss and top-k sums of every bit-width over one pass of `batches`, BN in eval mode.

    Each batch is read once and run at every bit-width. `forward` is the module to call (a DDP or
    compiled wrapper of `model`; default `model`); `criterion` defaults to plain cross-entropy.
    The sums of several processes combine with `MeterSet.reduce_`.
    """
    model.eval()
    forward = model if forward is None else forward
    criterion = nn.CrossEntropyLoss() if criterion is None else criterion
    meters = MeterSet(list(bits_list), list(topk), device)
    for images, labels in batches:
        for bits in bits_list:
            adabits.set_bits(model, bits)
            logits = forward(images)
            meters[bits].update(logits, labels, criterion(logits, labels))
    return meters
