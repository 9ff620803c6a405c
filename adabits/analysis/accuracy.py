"""Top-1 accuracy of any classifier over (images, labels) batches, optionally at a given bit-width.

`Trainer.evaluate` gives loss and top-k error of every trained bit-width through the training
config; this is the loop for everything else: a converted, calibrated or third-party model
(Brevitas, torch.ao, a float twin) on any iterable of batches.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..quant.bitwidth import Bits, use_bits


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits: Bits | None = None) -> float:
    """Top-1 accuracy in percent over every batch, the model in eval mode (its mode is restored after).

    `bits` runs a switchable model at that bit-width for the loop (see `adabits.use_bits`); None
    runs it as it is. Images and labels must be on the model's device.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with nullcontext() if bits is None else use_bits(model, bits):
            for images, labels in batches:
                correct += int((model(images).argmax(1) == labels).sum())
                total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("top1 needs at least one labelled image, got no batches")
    return 100.0 * correct / total


def top1_per_bits(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits_list: Iterable[Bits],
                  digits: int | None = 2) -> dict[Bits, float]:
    """`top1` at each bit-width of `bits_list` (rounded to `digits`; None keeps every digit).

    `batches` is iterated once per bit-width, so it must be re-iterable (a loader or a list)."""
    result = {}
    for bits in bits_list:
        value = top1(model, batches, bits)
        result[bits] = value if digits is None else round(value, digits)
    return result
