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


def _reference_quantize_weight(weight: Tensor, bits: int, scheme: QuantScheme) -> Tensor:
    """`quantize_weight` below full precision as composite autograd operations (what torch.compile traces)."""
    w32, dtype = _in_float32(weight)
    return (2 * _UnitQuantizeSTE.apply(_weight_unit(w32), bits, scheme) - 1).to(dtype)


class _QuantizedWeight(torch.autograd.Function):
    """DoReFa's weight quantizer, 2 q(u) - 1 with u = (tanh(W) / max|tanh(W)| + 1) / 2, times SAT's scale
    s = s0 / std(w_q) when given s0: one autograd node instead of a dozen.

    A weight is small; what the composite form costs is one dispatch and one autograd node per
    operation, forward and backward. Here the forward runs the composite's float operations in the
    same order (in place after the first), so the values are the same bit for bit, and saves tanh(W),
    its maximum and the scale. The backward is the composite's gradient: the straight-through estimator
    passes d/du, the SAT scale is a constant, and the maximum's gradient goes to the elements that
    reach it (shared evenly, like torch.max's):
      dL/dt = s g / m - [|t| = m] sign(t) sum(s g t) / (m^2 count),   dL/dW = dL/dt (1 - t^2).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, bits: int, scheme: QuantScheme,  # type: ignore[override]
                target: float | Tensor | None) -> Tensor:
        t = torch.tanh(weight)
        low, high = torch.aminmax(t)
        top = torch.maximum(high, low.neg())  # max |tanh(W)|, exactly
        a = scheme.levels(bits)
        units = torch.div(t, top).add_(1).div_(2).mul_(a)
        units.clamp_(0.0, float(scheme.max_code(bits)))
        codes = units.round_() if scheme.rounds else units.floor_()
        values = codes.add_(scheme.offset).div_(a) if scheme.offset else codes.div_(a)
        out = values.mul_(2).sub_(1)
        scale = None if target is None else target / out.std()
        if scale is not None:
            out.mul_(scale)
        ctx.save_for_backward(t, top, scale)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        t, top, scale = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        g = grad if scale is None else grad * scale
        grad_t = g / top
        at_top = t.abs() == top
        share = torch.dot(g.reshape(-1), t.reshape(-1)).neg_().div_(top * top).div_(at_top.sum())
        grad_t.add_(torch.where(at_top, t.sign().mul_(share), 0.0))
        return torch.ops.aten.tanh_backward(grad_t, t), None, None, None


def _fused_weight(weight: Tensor) -> bool:
    """The one-node weight quantizer serves float32 and float64 weights (others take the composite form)."""
    return weight.dtype in (torch.float32, torch.float64)


def quantize_weight(weight: Tensor, bits: int, scheme: str | QuantScheme = "modified", clamp: bool = True) -> Tensor:
    """Quantized weight 2 q(u) - 1 with u = (normalised W + 1) / 2; at 32 bits the (optionally) normalised W."""
    resolved = get_scheme(scheme)
    if bits >= FULL_PRECISION:
        return normalize_weight(weight) if clamp else weight
    if _fused_weight(weight):
        return _QuantizedWeight.apply(weight, bits, resolved, None)
    return _reference_quantize_weight(weight, bits, resolved)


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
    return _sat_target(weight, fan_out, rescale_type) / quantized_weight.detach().std()


def _sat_target(weight: Tensor, fan_out: int, rescale_type: str) -> float | Tensor:
    """SAT's s0: 1/sqrt(fan_out) ("constant") or std(W) ("stddev"), never differentiated."""
    if rescale_type == "constant":
        return 1.0 / math.sqrt(fan_out)
    if rescale_type == "stddev":
        return weight.detach().std()
    raise QuantOptionError(f"unknown rescale_type {rescale_type!r}; allowed: {', '.join(RESCALE_TYPES)}")


def _composite_sat_weight(weight: Tensor, bits: int, scheme: str | QuantScheme, clamp: bool, rescale: bool,
                          fan_out: int, rescale_type: str = "constant") -> Tensor:
    """`sat_weight` as composite autograd operations: what `compiled_sat_weight` compiles."""
    resolved = get_scheme(scheme)
    if bits >= FULL_PRECISION:
        quantized = normalize_weight(weight) if clamp else weight
    else:
        quantized = _reference_quantize_weight(weight, bits, resolved)
    return quantized * sat_scale(quantized, weight, fan_out, rescale_type) if rescale else quantized


def sat_weight(weight: Tensor, bits: int, scheme: str | QuantScheme, clamp: bool, rescale: bool, fan_out: int,
               rescale_type: str = "constant") -> Tensor:
    """The weight a quantized layer multiplies with: `quantize_weight`, times SAT's scale when `rescale`.

    Below full precision it is one autograd node (`_QuantizedWeight`), with the composite form's values."""
    if bits < FULL_PRECISION and _fused_weight(weight):
        target = _sat_target(weight, fan_out, rescale_type) if rescale else None
        return _QuantizedWeight.apply(weight, bits, get_scheme(scheme), target)
    return _composite_sat_weight(weight, bits, scheme, clamp, rescale, fan_out, rescale_type)


_compiled_flat_sat_weight = torch.compile(_composite_sat_weight, dynamic=True, fullgraph=True)


def compiled_sat_weight(weight: Tensor, bits: int, scheme: str | QuantScheme, clamp: bool, rescale: bool,
                        fan_out: int, rescale_type: str = "constant") -> Tensor:
    """`sat_weight` as one compiled graph (forward and backward); not bit-exact (kernels.py says why).

    Every operation of the weight quantizer is elementwise or a reduction over the whole weight, so the
    graph takes the weight as a 1-D view, and autocast is off inside (it computes in float32 anyway): the
    same few graphs serve every layer's shape, fp32 and autocast (with the weights' own shapes they outgrew
    dynamo's limit of 8 recompiles in benchmarks.training.quant_overhead --bf16). The 1-D view follows the weight's
    memory order and the result keeps its layout: a channels-last conv given a contiguous weight would reorder
    it on every call (suspected cause of the compiled-quantizer step at 1.39x the float one against the eager
    1.26x, benchmarks/results/training/quant_overhead_channels_last.json; the effect of this fix is not yet measured)."""
    nhwc = weight.dim() == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    ordered = weight.permute(0, 2, 3, 1) if nhwc else weight
    flat = ordered.reshape(-1).clone()  # a copy (a weight is small): dynamo would guard a view's base's shape
    with torch.autocast(weight.device.type, enabled=False):
        out = _compiled_flat_sat_weight(flat, bits, scheme, clamp, rescale, fan_out, rescale_type)
    shaped = out.view(ordered.shape)
    return shaped.permute(0, 3, 1, 2) if nhwc else shaped


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
    """Clip to [0, alpha] (or [-alpha, alpha]), quantize, rescale: one autograd node, eager.

    Written by hand because this runs on every activation of every quantized layer and the composite
    form makes about twice as many passes over the tensor. The work is done on u = x in units of one
    quantization step, so the clipping bounds are the constants 0 and a: forward allocates u, and every
    later pass (clamp, round, rescale) runs in place on it, so u becomes the output; it saves x (which
    the layer before keeps alive anyway) and the output, no copy. It takes alpha itself (any one-element
    tensor): |alpha|, its dtype and shape and the sign in its gradient are handled here, not by three
    more nodes each way. Gradients, under the straight-through estimator, are the composite's:
      d out / d x     = 1 inside the clipping range, 0 outside (hardtanh's backward on x: one pass);
      d out / d alpha = (out - x * inside) / |alpha|, times sign(alpha),
    the second as two dot products, sum(g out) - sum(g_x x), with no temporaries.

    Saving x rather than u (the clipping range tested on u) saves one copy of every activation a step:
    the 4-bit ResNet-20 step went from 1.27x to 1.20x the float step (benchmarks/training/quant_overhead.py). A
    bool mask of the clipping range costs more than it saves (--ablations; on this CPU comparisons writing
    bool and selects reading one run at a fraction of the speed of float passes). float16/bfloat16 inputs
    are quantized in float32 (their float32 copy is saved as x) and the output rounded once into their dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, scheme: QuantScheme,  # type: ignore[override]
                double_side: bool) -> Tensor:
        x32, dtype = _in_float32(x)
        level = alpha.detach().abs().to(x32.dtype).reshape(())
        a = scheme.levels(bits)
        ctx.dtype, ctx.double_side = dtype, double_side
        if double_side:  # u = (x / alpha + 1) / 2 * a
            units = torch.mul(x32, a / (2 * level)).add_(a / 2)
        else:  # u = x / alpha * a
            units = torch.mul(x32, a / level)
        codes = units.clamp_(0.0, float(scheme.max_code(bits)))
        codes = codes.round_() if scheme.rounds else codes.floor_()
        if scheme.offset:
            codes.add_(scheme.offset)
        out = codes.mul_(level / a) if not double_side else codes.mul_(2 * level / a).sub_(level)
        ctx.save_for_backward(x32, alpha, out)
        return out.to(dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, alpha, out = ctx.saved_tensors
        grad = grad.to(x.dtype)
        level = alpha.detach().abs().to(x.dtype).reshape(())
        grad_x = _inside_only(grad, x, level, ctx.double_side)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_flat, out_flat, grad_x_flat, x_flat = _flat_alike(grad, out, grad_x, x)
            total = (torch.dot(grad_flat, out_flat) - torch.dot(grad_x_flat, x_flat)) / level
            grad_alpha = total.reshape(alpha.shape).to(alpha.dtype) * alpha.sgn()
        return grad_x.to(ctx.dtype) if ctx.needs_input_grad[0] else None, grad_alpha, None, None, None


def _inside_only(grad: Tensor, x: Tensor, level: Tensor, double_side: bool) -> Tensor:
    """`grad` where x is strictly inside the clipping range (0 or -level, level), else 0.

    Eager on the CPU as hardtanh's backward, one pass with the bounds as numbers; elsewhere the bound stays a
    tensor: reading it as a number would wait for the device at every layer, and would break a compiled graph
    (which fuses the comparison and the select into one pass anyway)."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        bound = float(level)
        return torch.ops.aten.hardtanh_backward(grad, x, -bound if double_side else 0.0, bound)
    inside = (x > -level if double_side else x > 0).logical_and_(x < level)
    return torch.where(inside, grad, 0.0)


class _PACTQuantizeFused(torch.autograd.Function):
    """The PACT quantizer with the compiled kernels of kernels.py: one fused pass each way, saving only x.
    Forward and input gradient are the eager `_PACTQuantize`'s bit for bit."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, bits: int, scheme: QuantScheme,  # type: ignore[override]
                double_side: bool) -> Tensor:
        a = scheme.levels(bits)
        args = kernels.scheme_tensors(a, scheme.max_code(bits), scheme.offset, scheme.rounds, double_side, x.device)
        ctx.kernel_args = args
        ctx.save_for_backward(x, alpha)
        (flat,) = _flat_alike(x)
        out = _compiled_pact_forward(flat, alpha, *args, x.dtype)
        return _unflatten_like(out, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        grad_flat, x_flat = _flat_alike(grad, x)
        fused_x, fused_alpha = _compiled_pact_backward(grad_flat, x_flat, alpha, *ctx.kernel_args)
        return (_unflatten_like(fused_x, grad, x), fused_alpha if ctx.needs_input_grad[1] else None,
                None, None, None)


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
        return _PACTQuantizeFused.apply(x, alpha.abs().float().reshape(()), bits, resolved, double_side)
    if bits < FULL_PRECISION:
        return _PACTQuantize.apply(x, alpha, bits, resolved, double_side)
    x32, dtype = _in_float32(x)
    return clip_activation(x32, alpha.abs().to(x32.dtype).reshape(()), double_side).to(dtype)
