"""Mixed precision for the training step: the `precision` key (fp32, bf16, fp16).

Under bf16 or fp16, `torch.autocast` runs the convolutions and matrix products in that dtype; the
quantizers always compute in float32 (adabits.quant.functional), because their levels must be exact,
and hand their output back in the activation's dtype. The level a quantized value stands for survives
that rounding: the relative error of a bf16 rounding, 2^-9, is below half a step of 255 levels, so
the code of every value (round(value / step)) is the float32 code. The loss is computed in float32
on float32 logits. fp16 also scales the loss (a GradScaler) so that small gradients do not flush to
zero; its `step` reads one overflow flag on the host per step (torch's), bf16 and fp32 read none.
Evaluation runs in float32, so a checkpoint's metrics do not depend on the precision it trained in.
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward runs in."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (None otherwise)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
