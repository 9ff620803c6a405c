"""The loss of a joint step: each bit-width's loss, in-place distillation, and how the losses combine.

The seed sums the per-bit losses (`joint_loss: sum`), so the gradient grows with the number of
bit-widths and the lr must shrink with it; `mean` averages them and keeps one lr for any bits_list.
Distillation (docs/training.md) teaches a bit-width with the softened logits of a teacher: the
highest bit-width of the same step, the next higher one (recursive), or the frozen float model the
run started from. A taught bit-width's loss is (1 - w) * label loss + w * T^2 * KL(teacher || student);
the teacher's logits are detached, so no gradient flows into it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Distill = Literal["none", "highest", "recursive", "float"]
JointLoss = Literal["sum", "mean"]
#: the modes whose teacher is a bit-width of the same step (computed first, so the step goes highest first)
IN_STEP_TEACHERS = ("highest", "recursive")


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al.);
    the T^2 keeps its gradient on the scale of the label loss's for any T."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return kl * (t * t)


class JointObjective:
    """Per-bit losses of one joint step and their combination; `teacher_for` says who teaches whom."""

    def __init__(self, criterion: Callable[[Tensor, Tensor], Tensor], distill: Distill = "none", weight: float = 1.0,
                 temperature: float = 1.0, joint_loss: JointLoss = "sum") -> None:
        self.criterion = criterion
        self.distill = distill
        self.weight = weight
        self.temperature = temperature
        self.joint_loss = joint_loss

    @property
    def highest_first(self) -> bool:
        """Whether the step must run its bit-widths from the highest down (a teacher comes before its students)."""
        return self.distill in IN_STEP_TEACHERS

    def bit_loss(self, logits: Tensor, labels: Tensor, teacher: Tensor | None) -> tuple[Tensor, Tensor]:
        """(the loss this bit-width minimises, its label loss); without a teacher the two are the same."""
        label_loss = self.criterion(logits, labels)
        if teacher is None:
            return label_loss, label_loss
        soft = distillation_loss(logits, teacher, self.temperature)
        return (1 - self.weight) * label_loss + self.weight * soft, label_loss

    def scale(self, count: int) -> float:
        """The factor of each bit-width's loss in the step's loss: 1 (sum) or 1 / count (mean)."""
        return 1.0 if self.joint_loss == "sum" else 1.0 / count

    def next_teacher(self, teacher: Tensor | None, logits: Tensor) -> Tensor | None:
        """The teacher of the next (lower) bit-width of the step, after one whose logits are `logits`."""
        if self.distill == "recursive" or (self.distill == "highest" and teacher is None):
            return logits.detach()
        return teacher
