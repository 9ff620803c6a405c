"""Other forms of the quantizers, for `benchmarks.training.quant_overhead --ablations` (issue 32: measure each change).

- "previous": the quantizers before issue 32: the eager PACT node with |alpha|, its dtype and shape taken
  by three nodes outside it, and the weight quantizer as a dozen composite operations.
- "bool_mask": the PACT node saving a bool mask of the clipping range instead of u (float32), which the
  issue proposed; its values and gradients are the shipped node's.

Each is patched into adabits.quant.layers (what the layers call) for the steps of one variant only.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from adabits.quant import functional, layers
from adabits.quant.bitwidth import FULL_PRECISION
from adabits.quant.schemes import QuantScheme, get_scheme

FORMS = ("previous", "bool_mask")


class PreviousPACT(torch.autograd.Function):
    """The eager PACT node before issue 32 (alpha arrives as |alpha|, 0-d, in x's dtype)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, scheme: QuantScheme, double_side: bool) -> Tensor:  # type: ignore[override]
        a = scheme.levels(bits)
        ctx.levels, ctx.double_side = a, double_side
        units = torch.mul(x, a / (2 * alpha)).add_(a / 2) if double_side else torch.mul(x, a / alpha)
        codes = scheme.codes_from_units(units, bits)
        if scheme.offset:
            codes.add_(scheme.offset)
        out = codes.mul_(alpha / a) if not double_side else codes.mul_(2 * alpha / a).sub_(alpha)
        ctx.save_for_backward(x, alpha, units, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, alpha, units, out = ctx.saved_tensors
        grad_x = torch.ops.aten.hardtanh_backward(grad, units, 0.0, ctx.levels)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_flat, out_flat, grad_x_flat, x_flat = functional._flat_alike(grad, out, grad_x, x)
            grad_alpha = (torch.dot(grad_flat, out_flat) - torch.dot(grad_x_flat, x_flat)) / alpha
        return grad_x, grad_alpha, None, None, None


class _MaskPACT(torch.autograd.Function):
    """PACT saving a bool mask of the clipping range: forward computes it (two comparisons and an and)
    and then works in place on u; backward selects the gradient with it."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, scheme: QuantScheme, double_side: bool) -> Tensor:  # type: ignore[override]
        a = scheme.levels(bits)
        units = torch.mul(x, a / (2 * alpha)).add_(a / 2) if double_side else torch.mul(x, a / alpha)
        inside = torch.gt(units, 0.0).logical_and_(torch.lt(units, a))
        codes = units.clamp_(0.0, float(scheme.max_code(bits)))
        codes = codes.round_() if scheme.rounds else codes.floor_()
        if scheme.offset:
            codes.add_(scheme.offset)
        out = codes.mul_(alpha / a) if not double_side else codes.mul_(2 * alpha / a).sub_(alpha)
        ctx.save_for_backward(x, alpha, inside, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, alpha, inside, out = ctx.saved_tensors
        grad_x = torch.where(inside, grad, 0.0)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_flat, out_flat, grad_x_flat, x_flat = functional._flat_alike(grad, out, grad_x, x)
            grad_alpha = (torch.dot(grad_flat, out_flat) - torch.dot(grad_x_flat, x_flat)) / alpha
        return grad_x, grad_alpha, None, None, None


def _activation(node: type[torch.autograd.Function]) -> Callable[..., Tensor]:
    def quantize_activation(x: Tensor, alpha: Tensor, bits: int, scheme: str = "original", double_side: bool = False,
                            compiled: bool = False) -> Tensor:
        if compiled or bits >= FULL_PRECISION:
            return functional.quantize_activation(x, alpha, bits, scheme, double_side, compiled)
        x32, dtype = functional._in_float32(x)
        level = alpha.abs().to(x32.dtype).reshape(())
        return node.apply(x32, level, bits, get_scheme(scheme), double_side).to(dtype)

    return quantize_activation


ACTIVATION = {"previous": _activation(PreviousPACT), "bool_mask": _activation(_MaskPACT)}
WEIGHT = {"previous": functional._composite_sat_weight, "bool_mask": functional.sat_weight}


@contextmanager
def quantizers(form: str) -> Iterator[None]:
    """The layers call the quantizers of `form` (one of FORMS) inside the block."""
    saved = layers.quantize_activation, layers.sat_weight
    layers.quantize_activation, layers.sat_weight = ACTIVATION[form], WEIGHT[form]  # type: ignore[assignment]
    try:
        yield
    finally:
        layers.quantize_activation, layers.sat_weight = saved
