"""Evaluation of every bit-width over batches: `adabits.evaluate` for any loop, and the loop behind
`Trainer.evaluate` and `adabits test` (`evaluate_meters`, whose sums several processes combine)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..quant.bitwidth import Bits, get_bits, get_bits_list, set_bits
from .metrics import MeterSet


@torch.no_grad()
def evaluate_meters(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits_list: Sequence[Bits],
                    topk: Sequence[int], *, criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
                    device: torch.device | str = "cpu", forward: nn.Module | None = None) -> MeterSet:
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
            set_bits(model, bits)
            logits = forward(images)
            meters[bits].update(logits, labels, criterion(logits, labels))
    return meters


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], bits: Sequence[Bits] | None = None, *,
             topk: Sequence[int] = (1, 5), loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
             ) -> dict[Bits, dict[str, float]]:
    """{bits: {"loss": ..., "top1_error": ..., "top5_error": ...}} of a switchable model over (inputs, labels)
    batches (a DataLoader), every bit-width of the model unless `bits` names some; errors are fractions.

    Batches are moved to the model's device; the model's mode and bit-width are restored.
    """
    order = list(bits) if bits is not None else get_bits_list(model)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    moved = ((x.to(device), y.to(device)) for x, y in batches)
    previous, was_training = get_bits(model), model.training
    try:
        return evaluate_meters(model, moved, order, topk, criterion=loss_fn, device=device).summary()
    finally:
        set_bits(model, previous)
        model.train(was_training)
