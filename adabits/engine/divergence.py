"""Noticing a diverged run: a non-finite loss or gradient in a step, an epoch's loss far above chance.

`nonfinite: stop` (the default) never waits for the device inside a step: each step adds its verdict to a
flag on the device, which the trainer reads where it reads the device anyway (the progress bar's update,
and before every checkpoint is written, so that no checkpoint ever holds the weights of a bad step). The
run then stops with one line naming the first bad step, its bit-widths and the last good checkpoint.
`nonfinite: skip` reads the verdict after every backward (as a GradScaler does) and leaves the weights,
the optimizer and the scheduler as they were. Under fp16 the GradScaler already skips steps whose
gradients overflow (its loss scale searches for that): there, only the losses are checked.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..errors import TrainingDiverged
from ..quant.bitwidth import Bits, bits_text

#: an epoch's mean loss above this many times chance's (ln of the class count) is a diverged run, not a slow one
DIVERGED_LOSS_FACTOR = 100.0


class NonFiniteGuard:
    """The per-step check of one process: which bit-widths' losses (or the gradients) were not finite, and when."""

    def __init__(self, bits_list: Sequence[Bits], device: torch.device, check_gradients: bool) -> None:
        self.bits_list = list(bits_list)
        self.check_gradients = check_gradients
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the run's step index, -1: none yet
        self.bad_bits = torch.zeros(len(self.bits_list) + 1, dtype=torch.bool, device=device)  # last: gradients
        self.skipped = 0

    def verdict(self, losses: dict[Bits, Tensor], parameters: Iterable[Tensor]) -> Tensor:
        """A bool per bit-width (and one for the gradients): True where not finite; on the device."""
        bad = [~torch.isfinite(losses[b].detach()).all() if b in losses else torch.zeros((), dtype=torch.bool,
                                                                                          device=self.bad_bits.device)
               for b in self.bits_list]
        grads = [p.grad for p in parameters if p.grad is not None] if self.check_gradients else []
        norms = list(torch._foreach_norm(grads)) if grads else []
        bad.append(~torch.isfinite(torch.stack(norms).sum()) if norms
                   else torch.zeros((), dtype=torch.bool, device=self.bad_bits.device))
        return torch.stack(bad)

    def record(self, step: int, verdict: Tensor) -> None:
        """Remember the first bad step on the device (no host read)."""
        any_bad = verdict.any()
        first = (self.first_bad < 0) & any_bad
        self.first_bad.copy_(torch.where(first, torch.full_like(self.first_bad, step), self.first_bad))
        self.bad_bits.copy_(torch.where(first, verdict, self.bad_bits))

    def check(self, iters_per_epoch: int, last_good: str) -> None:
        """TrainingDiverged when a step so far was not finite (a host read)."""
        step = int(self.first_bad.item())
        if step < 0:
            return
        flags = self.bad_bits.tolist()
        parts = [bits_text(b) for b, bad in zip(self.bits_list, flags) if bad]
        if flags[-1]:
            parts.append("the gradients")
        epoch, index = divmod(step, iters_per_epoch)
        raise TrainingDiverged(
            f"training diverged at step {index + 1} of epoch {epoch + 1}: non-finite {', '.join(parts)}; the last good "
            f"checkpoint is {last_good}. Lower lr or add warmup_epochs, or set nonfinite: skip to skip such steps")


def check_epoch(epoch: int, train: dict[Bits, dict[str, float]], num_classes: int, lr: float, run_dir: object) -> None:
    """TrainingDiverged when an epoch's mean loss at some bit-width is not finite, or more than
    DIVERGED_LOSS_FACTOR times the loss of guessing uniformly (ln of the class count): an exploding run whose
    loss is still a number (lr 1e6 on the float ResNet-20: a mean loss of about 1e6) says so too."""
    chance = math.log(num_classes)
    diverged = {b: m["loss"] for b, m in train.items()
                if not math.isfinite(m["loss"]) or m["loss"] > DIVERGED_LOSS_FACTOR * chance}
    if diverged:
        losses = ", ".join(f"{bits_text([b], 'config')}: {loss:.3g}" for b, loss in diverged.items())
        raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: mean loss {losses}, where guessing gives "
                               f"{chance:.3g}; lower lr (now {lr}) or add warmup_epochs. Checkpoints "
                               f"kept in {run_dir} are from the epochs before.")
