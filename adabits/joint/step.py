"""The AdaBits joint step as one call any training loop can make: forward and backward at every bit-width.

    for images, labels in loader:
        optimizer.zero_grad()
        losses = adabits.joint_step(model, images, labels)   # {8: 0.41, 6: 0.42, ...}
        optimizer.step()

Each bit-width's loss is backpropagated as soon as it is computed (one graph in memory at a time), so
the gradients of all bit-widths add up in `.grad` and the caller's optimizer takes one step. Under
DistributedDataParallel every backward runs under `no_sync` and the gradients then meet in one averaging
all-reduce per step (`GradientAllReduce`), not one per bit-width, and DDP needs no
`find_unused_parameters` for the other bit-widths' BN copies and clipping levels; a caller that reduces
gradients itself (the YAML trainer weights each process by its share of the batch) passes `reduce_gradients`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..quant.bitwidth import Bits, get_bits_list, set_bits
from .gradients import GradientAllReduce
from .objective import Distill, JointLoss, JointObjective
from .sampling import highest_first

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class BitStep:
    """One bit-width of a joint step: the loss it minimised (scaled into the step's loss), its label loss and
    its logits, both detached."""

    loss: Tensor
    label_loss: Tensor
    logits: Tensor

    def __float__(self) -> float:
        return float(self.label_loss)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(getattr(model, "_orig_mod", model), nn.parallel.DistributedDataParallel)  # or compiled DDP


def _no_sync(model: nn.Module) -> contextlib.AbstractContextManager:
    inner = getattr(model, "_orig_mod", model)
    return inner.no_sync() if isinstance(inner, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def joint_step(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    *,
    bits: Sequence[Bits] | None = None,
    joint_loss: JointLoss = "mean",
    distill: Distill = "none",
    distill_weight: float = 1.0,
    distill_temperature: float = 1.0,
    teacher_logits: Tensor | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    grad_scaler: torch.amp.GradScaler | None = None,
    reduce_gradients: Callable[[], None] | None = None,
    backward: Callable[[Tensor], None] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    assignments: Sequence[Mapping[str, Bits]] = (),
) -> dict[Bits | str, BitStep]:
    """Forward and backward of `model` (a converted model, or DDP / torch.compile around one) at each bit-width.

    `bits` defaults to every bit-width of the model (a sandwich sample is `adabits.joint.StepBits(...).at(step)`).
    `joint_loss` "mean" averages the per-bit losses (one lr for any number of bit-widths), "sum" adds them as
    the seed did. `distill` "highest" / "recursive" teach each bit-width with the softened logits of the step's
    highest / next higher one (the step then runs from the highest down), "float" with `teacher_logits`
    (a frozen float model's logits on `inputs`). `autocast` is the context each forward runs in (e.g.
    `lambda: torch.autocast("cuda", torch.bfloat16)`); logits are cast to float32 for the loss. With
    `grad_scaler` each loss is scaled before its backward. `backward` replaces `loss.backward()` for a trainer
    that owns it (PyTorch Lightning's `self.manual_backward`, which applies its precision plugin's scaling and
    its strategy's hooks; under its fp16 precision `manual_backward` scales the loss, so leave `grad_scaler` unset).
    `no_sync` is the context the backwards run in so that the wrapper does not all-reduce each one, for a trainer
    that wraps its own module in DDP rather than `model` (Lightning: `self.trainer.strategy.block_backward_sync`,
    with `reduce_gradients=adabits.joint.GradientAllReduce(params)` bound to 1 / world size); by default the
    model's own `no_sync` when it is DDP. `assignments` adds per-layer assignments ({layer or pattern: bits}, e.g.
    `adabits.joint.random_assignments`) after the uniform bit-widths, so that the model stays accurate under mixed
    ones; a distilled step teaches them with its highest bit-width's logits. Leaves the model at its last
    bit-width or assignment; the caller zeroes gradients before and steps the optimizer after. Returns
    {bits: BitStep} in step order, the assignments under "mixed:0", "mixed:1", ...
    """
    objective = JointObjective(loss_fn, distill, distill_weight, distill_temperature, joint_loss)
    if (distill == "float") != (teacher_logits is not None):
        raise ValueError("distill='float' teaches with a float model's logits, and teacher_logits is for it alone: "
                         f"got distill={distill!r} with{'out' if teacher_logits is None else ''} teacher_logits")
    order = list(bits) if bits is not None else get_bits_list(model)
    if objective.highest_first and bits is None:
        order = highest_first(order)
    scale = objective.scale(len(order) + len(assignments))
    tutor = teacher_logits.detach() if teacher_logits is not None else None
    results: dict[Bits | str, BitStep] = {}
    highest: Tensor | None = None  # the mixed assignments' teacher, when the step distills in itself
    steps: list[tuple[Bits | str, Bits | Mapping[str, Bits]]] = [
        *((b, b) for b in order), *((f"mixed:{i}", a) for i, a in enumerate(assignments))]
    with (_no_sync(model) if no_sync is None else no_sync()):  # the gradients meet once, below, not per bit-width
        for key, bits_now in steps:
            if isinstance(key, str) and distill != "float":
                tutor = highest
            set_bits(model, bits_now)
            with autocast():
                logits = model(inputs).float()
            loss, label_loss = objective.bit_loss(logits, targets, tutor)
            loss = loss * scale
            scaled = loss if grad_scaler is None else grad_scaler.scale(loss)
            if backward is None:
                scaled.backward()
            else:
                backward(scaled)
            tutor = objective.next_teacher(tutor, logits)
            if highest is None and objective.highest_first:
                highest = logits.detach()
            results[key] = BitStep(loss.detach(), label_loss.detach(), logits.detach())
    if reduce_gradients is not None:
        reduce_gradients()
    elif _is_ddp(model):
        GradientAllReduce(model.parameters())(1.0 / dist.get_world_size())
    return results
