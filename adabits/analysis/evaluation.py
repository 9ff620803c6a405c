"""Evaluation over batches, in one loop (`evaluate_meters`): `adabits.evaluate` (loss and top-k errors of every
bit-width) for any training loop, `top1` for any classifier (a float twin, Brevitas, torch.ao, at a bit-width or
as it is), and the sums behind `Trainer.evaluate` and `adabits test` that several processes combine."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..quant.bitwidth import Bits, get_bits, get_bits_list, set_bits
from .metrics import MeterSet


@torch.no_grad()
def evaluate_meters(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits_list: Sequence[Bits | None],
                    topk: Sequence[int], *, criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
                    device: torch.device | str = "cpu", forward: nn.Module | None = None) -> MeterSet:
    """Loss and top-k sums of every bit-width over one pass of `batches`, BN in eval mode.

    Each batch is read once and run at every bit-width. `forward` is the module to call (a DDP or
    compiled wrapper of `model`; default `model`); `criterion` defaults to plain cross-entropy.
    The sums of several processes combine with `MeterSet.reduce_`. A bit-width of None runs the model as it is.
    """
    model.eval()
    forward = model if forward is None else forward
    criterion = nn.CrossEntropyLoss() if criterion is None else criterion
    meters = MeterSet(list(bits_list), list(topk), device)  # type: ignore[arg-type]  # None: the model as it is
    for images, labels in batches:
        for bits in bits_list:
            if bits is not None:
                set_bits(model, bits)
            logits = forward(images)
            meters[bits].update(logits, labels, criterion(logits, labels))  # type: ignore[index]
    return meters


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits: Sequence[Bits] | None = None, *,
             topk: Sequence[int] = (1, 5), loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
             ) -> dict[Bits, dict[str, float]]:
    """{bits: {"loss": ..., "top1_error": ..., "top5_error": ...}} of a switchable model over (inputs, labels)
    batches (a DataLoader), every bit-width of the model unless `bits` names some; errors are fractions.

    Batches are moved to the model's device; the model's mode and bit-width are restored.
    """
    order: list[Bits | None] = list(bits) if bits is not None else list(get_bits_list(model))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    moved = ((x.to(device), y.to(device)) for x, y in batches)
    previous, was_training = (get_bits(model) if order != [None] else None), model.training
    try:
        return evaluate_meters(model, moved, order, topk, criterion=loss_fn, device=device).summary()  # type: ignore[return-value]
    finally:
        if previous is not None:
            set_bits(model, previous)
        model.train(was_training)


def top1(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits: Bits | None = None) -> float:
    """Top-1 accuracy in percent of any classifier over (images, labels) batches, in eval mode (mode and bit-width
    restored after); `bits` runs a switchable model at that bit-width, None runs it as it is."""
    result = evaluate(model, batches, [bits], topk=(1,))  # type: ignore[list-item]  # None: the model as it is
    if not result:  # a bit-width with no samples has no summary
        raise ValueError("top1 needs at least one labelled image, got no batches")
    return 100.0 * (1.0 - next(iter(result.values()))["top1_error"])


def top1_per_bits(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits_list: Iterable[Bits],
                  digits: int | None = 2) -> dict[Bits, float]:
    """`top1` at each bit-width of `bits_list` (rounded to `digits`; None keeps every digit); `batches` is read
    once per bit-width, so it must be re-iterable (a loader or a list)."""
    result = {}
    for bits in bits_list:
        value = top1(model, batches, bits)
        result[bits] = value if digits is None else round(value, digits)
    return result
