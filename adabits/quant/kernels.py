"""The PACT quantizer as two pure functions, forward and backward, written to be compiled (functional.py).

Eager, the PACT quantizer makes about four passes over an activation in forward (scale, clip,
round, rescale) and three in backward, and saves a second activation-sized tensor; beside a
convolution of a few channels that is a large part of a training step. Compiled here, the forward
is one pass (read x, write the quantized x) and the backward one pass that recomputes what it
needs from x (read x and the gradient, write the input gradient and accumulate the clipping
level's), so it saves nothing but x. The weight quantizer is a chain of a dozen small ops per
layer whose cost is their launch overhead; compiled, it is one graph forward and one backward.

Only the quantizers are compiled, never the model (`functional.quantize_activation(compiled=True)`,
`functional.compiled_sat_weight`): each graph compiles in seconds, once per process (Inductor's cache
makes later processes faster still), with dynamic shapes so that every layer and batch size shares it.

Exactness: the compiled PACT forward and input gradient equal the eager ones bit for bit (the same
float32 operations in the same order); the clipping level's gradient is a sum over the activation
whose order differs (relative differences up to ~1e-4 measured). The compiled weight quantizer uses Inductor's tanh
and std, which differ from ATen's in the last bits, so a weight on a code boundary may round the
other way: layers use it in training only (`QuantLayer.compiled_quantizers`), and evaluation and
every export use the eager reference.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _pact_units(x: Tensor, alpha: Tensor, levels: Tensor, width: Tensor, shift: Tensor) -> Tensor:
    """x in units of one quantization step: the clipping bounds become 0 and `levels`
    (width 1, shift 0: one-sided; width 2, shift levels / 2: two-sided)."""
    return x * (levels / (width * alpha)) + shift


def _pact_values(units: Tensor, alpha: Tensor, levels: Tensor, max_code: Tensor, offset: Tensor, rounds: Tensor,
                 width: Tensor, two_sided: Tensor) -> Tensor:
    codes = torch.clamp(units, torch.zeros_like(max_code), max_code)
    codes = torch.where(rounds, codes.round(), codes.floor()) + offset
    return codes * (width * alpha / levels) - alpha * two_sided


SchemeTensors = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def scheme_tensors(levels: float, max_code: int, offset: float, rounds: bool, double_side: bool,
                   device: torch.device) -> SchemeTensors:
    """The scheme's numbers and flags as 0-d float32 tensors (levels, top code, offset, rounds, width, shift,
    two-sided), so that one compiled graph per dtype and device serves every scheme, side and bit-width."""
    width = 2.0 if double_side else 1.0
    shift = levels / 2 if double_side else 0.0
    values = torch.tensor([levels, max_code, offset, float(rounds), width, shift, float(double_side)], device=device)
    return tuple(values.unbind())  # type: ignore[return-value]  # seven, as listed


def pact_forward(x: Tensor, alpha: Tensor, levels: Tensor, max_code: Tensor, offset: Tensor, rounds: Tensor,
                 width: Tensor, shift: Tensor, two_sided: Tensor, out_dtype: torch.dtype) -> Tensor:
    """The PACT quantizer's output (functional._PACTQuantize's forward), computed in float32.

    Every number of the scheme comes as a 0-d float32 tensor (`scheme_tensors`), and x as a 1-D view in
    memory order (functional passes one), so the graph depends only on the dtype, the device and the layout
    of the view's base (dynamo guards it): a few graphs per process, whatever the schemes and sides (a graph
    per scheme and side outgrew dynamo's limit of 8 recompiles in the first GPU run)."""
    x32 = x.float()
    units = _pact_units(x32, alpha, levels, width, shift)
    return _pact_values(units, alpha, levels, max_code, offset, rounds > 0, width, two_sided).to(out_dtype)


def pact_backward(grad: Tensor, x: Tensor, alpha: Tensor, levels: Tensor, max_code: Tensor, offset: Tensor,
                  rounds: Tensor, width: Tensor, shift: Tensor, two_sided: Tensor) -> tuple[Tensor, Tensor]:
    """(d loss / d x, d loss / d alpha) of `pact_forward` under the straight-through estimator."""
    x32 = x.float()
    units = _pact_units(x32, alpha, levels, width, shift)
    inside = (units > 0) & (units < levels)
    out = _pact_values(units, alpha, levels, max_code, offset, rounds > 0, width, two_sided)
    grad32 = grad.float()
    grad_x = torch.where(inside, grad32, 0.0)
    grad_alpha = (grad32 * (out - torch.where(inside, x32, 0.0))).sum() / alpha
    return grad_x.to(grad.dtype), grad_alpha
