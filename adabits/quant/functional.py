"""Pure tensor functions of the AdaBits + SAT quantizers.

The weight quantizer is DoReFa's (Zhou et al., 2016) with AdaBits' schemes (Jin, Yang and Liao,
CVPR 2020; adabits.quant.schemes), the activation quantizer is PACT's (Choi et al., 2018) with a
learned clipping level, and the weight rescaling is SAT's (Jin, Yang and Liao, arXiv:1912.10207).
docs/architecture.md lists the formulas.

Everything here is stateless: layers own the parameters and call these functions.
No function reads a tensor value on the host, so none of them synchronises a device.
Half-precision inputs are quantized in float32 and returned in their own dtype, because
2^b levels cannot be represented exactly in float16/bfloat16 for b >= 8.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..errors import QuantOptionError
from . import kernels
from .bitwidth import FULL_PRECISION
from .schemes import SCHEMES, QuantScheme, SchemeName, get_scheme

Scheme = SchemeName
RescaleType = Literal["constant", "stddev"]
RESCALE_TYPES: tuple[str, ...] = ("constant", "stddev")

__all__ = [
    "FULL_PRECISION", "RESCALE_TYPES", "SCHEMES", "channel_codes", "channel_max", "channel_unit", "channel_weight",
    "check_scheme", "clip_activation", "codes_to_unit",
    "codes_to_weight", "normalize_weight", "quantize_activation", "quantize_codes", "quantize_unit",
    "quantize_weight", "sat_scale", "sat_weight", "weight_codes",
]


def check_scheme(scheme: str) -> None:
    """Raise a QuantOptionError (a ValueError) that lists the allowed schemes."""
    get_scheme(scheme)


def quantize_codes(x: Tensor, bits: int, scheme: str | QuantScheme) -> Tensor:
    """Integer codes k (as floats) of x in [0, 1]; no gradient (used inside the STE functions)."""
    return get_scheme(scheme).codes(x, bits)


def codes_to_unit(codes: Tensor, bits: int, scheme: str | QuantScheme) -> Tensor:
    """The values in [0, 1] that integer codes stand for (the inverse of `quantize_codes`)."""
    return get_scheme(scheme).values(codes, bits)


class _UnitQuantizeSTE(torch.autograd.Function):
    """q_k(x) forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor, bits: int, scheme: QuantScheme) -> Tensor:  # type: ignore[override]
        return scheme.values(scheme.codes(x, bits), bits)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None, None


def _in_float32(x: Tensor) -> tuple[Tensor, torch.dtype]:
    dtype = x.dtype
    return (x.float() if dtype in (torch.float16, torch.bfloat16) else x), dtype


def quantize_unit(x: Tensor, bits: int, scheme: str | QuantScheme = "original") -> Tensor:
    """Quantize x in [0, 1] to `bits` bits with `scheme`; the gradient passes straight through."""
    x32, dtype = _in_float32(x)
    return _UnitQuantizeSTE.apply(x32, bits, get_scheme(scheme)).to(dtype)


def normalize_weight(weight: Tensor) -> Tensor:
    """DoReFa normalisation tanh(W) / max|tanh(W)| into [-1, 1]; gradient flows through both parts."""
    t = torch.tanh(weight)
    return t / t.abs().max()


def _weight_unit(weight: Tensor) -> Tensor:
    """u = (tanh(W) / max|tanh(W)| + 1) / 2 in [0, 1]: what the weight quantizer rounds."""
    return (normalize_weight(weight) + 1) / 2


def quantize_weight(weight: Tensor, bits: int, scheme: str | QuantScheme = "modified", clamp: bool = True) -> Tensor:
    """Quantized weight 2 q(u) - 1 with u = (normalised W + 1) / 2; at 32 bits the (optionally) normalised W."""
    resolved = get_scheme(scheme)
    if bits >= FULL_PRECISION:
        return normalize_weight(weight) if clamp else weight
    w32, dtype = _in_float32(weight)
    return (2 * _UnitQuantizeSTE.apply(_weight_unit(w32), bits, resolved) - 1).to(dtype)


def weight_codes(weight: Tensor, bits: int, scheme: str | QuantScheme) -> Tensor:
    """The integer codes k (int64) that `quantize_weight(weight, bits, scheme)` rounds the weight to."""
    unit = _weight_unit(weight.detach().float())
    return get_scheme(scheme).codes(unit, bits).to(torch.int64)


def codes_to_weight(codes: Tensor, bits: int, scheme: str | QuantScheme) -> Tensor:
    """2 q - 1 from integer codes, with the same float operations as `quantize_weight`'s forward."""
    return 2 * get_scheme(scheme).values(codes.float(), bits) - 1


def channel_max(weight: Tensor) -> Tensor:
    """max |W| per output channel (dim 0), detached; never zero, so an all-zero channel quantizes to zeros."""
    top = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    return top.clamp_min(torch.finfo(top.dtype).tiny)


def _broadcast(scale: Tensor, weight: Tensor) -> Tensor:
    return scale.reshape(-1, *([1] * (weight.dim() - 1)))


def channel_unit(weight: Tensor, scale: Tensor) -> Tensor:
    """u = (clamp(W / s, -1, 1) + 1) / 2 in [0, 1] with one scale s per output channel: what the per-channel
    weight quantizer rounds, with the gradient of the clamp (zero for a clipped weight)."""
    s = _broadcast(scale, weight)
    return (torch.maximum(torch.minimum(weight / s, torch.ones_like(s)), -torch.ones_like(s)) + 1) / 2


def channel_weight(weight: Tensor, bits: int, scheme: str | QuantScheme, scale: Tensor) -> Tensor:
    """The per-channel weight quantizer for pretrained weights: s * (2 q(u) - 1), `channel_unit`'s u.

    Unlike DoReFa's tanh(W) / max|tanh(W)| it keeps W's own scale (s per output channel, e.g.
    `channel_max`), so at high bit-widths the layer computes what the float layer computed and a float
    model's BN statistics and later layers still fit. The codes are a scheme's codes of u, so the nested
    schemes stay nested: the b-bit codes are the B-bit codes shifted right. At 32 bits, W itself.
    """
    if bits >= FULL_PRECISION:
        return weight
    w32, dtype = _in_float32(weight)
    s = _broadcast(scale.float(), w32)
    return (s * (2 * _UnitQuantizeSTE.apply(channel_unit(w32, scale.float()), bits, get_scheme(scheme)) - 1)).to(dtype)


def channel_codes(weight: Tensor, bits: int, scheme: str | QuantScheme, scale: Tensor) -> Tensor:
    """The integer codes k (int64) that `channel_weight(weight, bits, scheme, scale)` rounds the weight to."""
    unit = channel_unit(weight.detach().float(), scale.detach().float())
    return get_scheme(scheme).codes(unit, bits).to(torch.int64)


def sat_scale(
    quantized_weight: Tensor, weight: Tensor, fan_out: int, rescale_type: str = "constant"
) -> Tensor:
    """SAT's scale s = s0 / std(w_q), s0 = 1/sqrt(fan_out) ("constant") or std(W) ("stddev"); never differentiated.

    It keeps the variance of a layer's output what it was in float (SAT, arXiv:1912.10207).
    """
    if rescale_type == "constant":
        target: Tensor | float = 1.0 / math.sqrt(fan_out)
    elif rescale_type == "stddev":
        target = weight.detach().std()
    else:
        raise QuantOptionError(f"unknown rescale_type {rescale_type!r}; allowed: {', '.join(RESCALE_TYPES)}")
    return target / quantized_weight.detach().std()


def sat_weight(weight: Tensor, bits: int, scheme: str | QuantScheme, clamp: bool, rescale: bool, fan_out: int,
               rescale_type: str = "constant") -> Tensor:
    """The weight a quantized layer multiplies with: `quantize_weight`, times SAT's scale when `rescale`."""
    quantized = quantize_weight(weight, bits, scheme, clamp)
    return quantized * sat_scale(quantized, weight, fan_out, rescale_type) if rescale else quantized


#: `sat_weight` as one compiled graph (forward and backward); not bit-exact (kernels.py says why)
compiled_sat_weight = torch.compile(sat_weight, dynamic=True, fullgraph=True)
_compiled_pact_forward = torch.compile(kernels.pact_forward, dynamic=True, fullgraph=True)
_compiled_pact_backward = torch.compile(kernels.pact_backward, dynamic=True, fullgraph=True)


def _channels_last_order(tensors: tuple[Tensor, ...]) -> bool:
    """True when same-shaped 4-D tensors are best read in NHWC order (one of them is channels-last)."""
    return tensors[0].dim() == 4 and any(
        t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in tensors)


def _flat_alike(*tensors: Tensor) -> tuple[Tensor, ...]:
    """1-D views of same-shaped tensors in one common element order (views where the layout allows)."""
    if _channels_last_order(tensors):
        return tuple(t.permute(0, 2, 3, 1).reshape(-1) for t in tensors)
    return tuple(t.reshape(-1) for t in tensors)


def _unflatten_like(flat: Tensor, *like: Tensor) -> Tensor:
    """The inverse of `_flat_alike` for the first of `like`: `flat` back in its shape and memory layout."""
    if _channels_last_order(like):
        n, c, h, w = like[0].shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(like[0].shape)


class _PACTQuantize(torch.autograd.Function):
    """Clip to [0, alpha] (or [-alpha, alpha]), quantize, rescale: one autograd node.

    Written by hand because this runs on every activation of every quantized layer and the
    composite form makes about twice as many passes over the tensor in eager mode. The work is
    done on u = x in units of one quantization step, so the clipping bounds are the constants
    0 and a and every pass but the first runs in place. Gradients are the composite's under
    the straight-through estimator:
      d out / d x     = 1 inside the clipping range, 0 outside;
      d out / d alpha = (out - x * inside) / alpha.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, scheme: QuantScheme, double_side: bool,  # type: ignore[override]
                compiled: bool) -> Tensor:
        a = scheme.levels(bits)
        ctx.levels, ctx.compiled = a, compiled
        if compiled:  # one fused pass each way, saving only x (kernels.py)
            args = kernels.scheme_tensors(a, scheme.max_code(bits), scheme.offset, scheme.rounds, double_side, x.device)
            ctx.kernel_args = args
            ctx.save_for_backward(x, alpha)
            (flat,) = _flat_alike(x)
            out = _compiled_pact_forward(flat, alpha, *args, x.dtype)
            return _unflatten_like(out, x)
        if double_side:  # u = (x / alpha + 1) / 2 * a
            units = torch.mul(x, a / (2 * alpha)).add_(a / 2)
        else:  # u = x / alpha * a
            units = torch.mul(x, a / alpha)
        codes = scheme.codes_from_units(units, bits)
        if scheme.offset:
            codes.add_(scheme.offset)
        out = codes.mul_(alpha / a) if not double_side else codes.mul_(2 * alpha / a).sub_(alpha)
        ctx.save_for_backward(x, alpha, units, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        if ctx.compiled:
            x, alpha = ctx.saved_tensors
            grad_flat, x_flat = _flat_alike(grad, x)
            fused_x, fused_alpha = _compiled_pact_backward(grad_flat, x_flat, alpha, *ctx.kernel_args)
            return (_unflatten_like(fused_x, grad, x), fused_alpha if ctx.needs_input_grad[1] else None,
                    None, None, None, None)
        x, alpha, units, out = ctx.saved_tensors
        grad_x = torch.ops.aten.hardtanh_backward(grad, units, 0.0, ctx.levels)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            # sum(grad * (out - x * inside)) / alpha as two reductions, with no temporaries
            grad_flat, out_flat, grad_x_flat, x_flat = _flat_alike(grad, out, grad_x, x)
            grad_alpha = (torch.dot(grad_flat, out_flat) - torch.dot(grad_x_flat, x_flat)) / alpha
        return grad_x, grad_alpha, None, None, None, None


def clip_activation(x: Tensor, alpha: Tensor, double_side: bool = False) -> Tensor:
    """PACT clipping without quantization (`pact_fp`): min(relu(x), alpha) or clamp(x, -alpha, alpha)."""
    if double_side:
        return torch.maximum(torch.minimum(x, alpha), -alpha)
    return torch.minimum(torch.relu(x), alpha)


def quantize_activation(
    x: Tensor,
    alpha: Tensor,
    bits: int,
    scheme: str = "original",
    double_side: bool = False,
    compiled: bool = False,
) -> Tensor:
    """PACT activation quantization (Choi et al., 2018) with clipping level |alpha|.

    At `bits >= 32` only the clipping is applied (the `pact_fp` path). `alpha` is a 0-d or
    one-element tensor; its gradient comes from the clip and from alpha * q(x / alpha).
    `compiled` runs the fused kernels of kernels.py: the same values, in one pass each way.
    """
    resolved = get_scheme(scheme)
    if compiled and bits < FULL_PRECISION:
        return _PACTQuantize.apply(x, alpha.abs().float().reshape(()), bits, resolved, double_side, True)
    x32, dtype = _in_float32(x)
    alpha = alpha.abs().to(x32.dtype).reshape(())
    if bits >= FULL_PRECISION:
        return clip_activation(x32, alpha, double_side).to(dtype)
    return _PACTQuantize.apply(x32, alpha, bits, resolved, double_side, False).to(dtype)
