"""The one-node quantizers of adabits.quant.functional (issue 32) against the implementation they replaced.

`_PACTQuantize` (eager PACT, |alpha| taken inside) and `_QuantizedWeight` (DoReFa weights, SAT scale)
are single autograd nodes. Their outputs and gradients (input and alpha) must be the previous
implementation's, kept here verbatim as the reference, at every scheme, side, bit-width, dtype and
layout: outputs and input gradients bit for bit, the clipping level's and the weight's gradients to
float rounding. None of these tests times anything.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from adabits.quant.functional import (
    _flat_alike,
    _in_float32,
    _UnitQuantizeSTE,
    quantize_activation,
    quantize_weight,
    sat_scale,
    sat_weight,
)
from adabits.quant.schemes import SCHEMES, get_scheme
from benchmarks.training.quant_variants import PreviousPACT

# ---------------------------------------------------------------- the reference: the code before issue 32
# (its PACT node is kept in the benchmark that times it against today's)
_RefUnitSTE = _UnitQuantizeSTE


class _RefPACT(PreviousPACT):
    """The PACT node before issue 32, its input gradient passed where x is strictly inside the clipping range,
    as the straight-through estimator states it. The earlier node tested u = x a / alpha instead, so an x
    exactly on alpha whose u rounded just below a (x = alpha = 0.23828125 at 1 bit) passed its gradient."""

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, alpha, _units, out = ctx.saved_tensors
        low = -float(alpha) if ctx.double_side else 0.0
        grad_x = torch.ops.aten.hardtanh_backward(grad, x, low, float(alpha))
        grad_flat, out_flat, grad_x_flat, x_flat = _flat_alike(grad, out, grad_x, x)
        grad_alpha = (torch.dot(grad_flat, out_flat) - torch.dot(grad_x_flat, x_flat)) / alpha
        return grad_x, grad_alpha if ctx.needs_input_grad[1] else None, None, None, None


def reference_activation(x: Tensor, alpha: Tensor, bits: int, scheme: str, double_side: bool) -> Tensor:
    x32, dtype = _in_float32(x)
    alpha = alpha.abs().to(x32.dtype).reshape(())
    return _RefPACT.apply(x32, alpha, bits, get_scheme(scheme), double_side).to(dtype)


def reference_weight(weight: Tensor, bits: int, scheme: str) -> Tensor:
    w32, dtype = _in_float32(weight)
    t = torch.tanh(w32)
    unit = (t / t.abs().max() + 1) / 2
    return (2 * _RefUnitSTE.apply(unit, bits, get_scheme(scheme)) - 1).to(dtype)


def reference_sat_weight(weight: Tensor, bits: int, scheme: str, rescale: bool, fan_out: int,
                         rescale_type: str) -> Tensor:
    quantized = reference_weight(weight, bits, scheme)
    if not rescale:
        return quantized
    target = 1.0 / math.sqrt(fan_out) if rescale_type == "constant" else weight.detach().std()
    return quantized * (target / quantized.detach().std())


# ---------------------------------------------------------------- PACT
def _run_activation(fn, x: Tensor, alpha: Tensor, upstream: Tensor, *args) -> tuple[Tensor, Tensor, Tensor]:
    x = x.detach().clone().requires_grad_()
    alpha = alpha.detach().clone().requires_grad_()
    out = fn(x, alpha, *args)
    out.backward(upstream)
    assert x.grad is not None and alpha.grad is not None
    return out.detach(), x.grad, alpha.grad


def _assert_activation_matches(x: Tensor, alpha: Tensor, upstream: Tensor, bits: int, scheme: str,
                               double_side: bool) -> None:
    out, grad_x, grad_alpha = _run_activation(quantize_activation, x, alpha, upstream, bits, scheme, double_side)
    ref_out, ref_grad_x, ref_grad_alpha = _run_activation(reference_activation, x, alpha, upstream, bits, scheme,
                                                          double_side)
    assert out.dtype == ref_out.dtype and out.shape == ref_out.shape
    assert torch.equal(out, ref_out), (bits, scheme, double_side)
    assert out.is_contiguous(memory_format=torch.channels_last) == ref_out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grad_x, ref_grad_x), (bits, scheme, double_side)
    assert grad_alpha.shape == ref_grad_alpha.shape and grad_alpha.dtype == ref_grad_alpha.dtype
    torch.testing.assert_close(grad_alpha, ref_grad_alpha, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("double_side", [False, True])
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8, 12])
def test_pact_equals_the_previous_implementation(bits: int, scheme: str, double_side: bool) -> None:
    torch.manual_seed(bits)
    alpha = torch.tensor(2.5)
    x = torch.randn(6, 5, 7, 7) * 3
    levels = get_scheme(scheme).levels(bits)
    step = (2 if double_side else 1) * 2.5 / levels
    x.view(-1)[:40] = torch.arange(-20, 20) * step  # on the code boundaries, 0 and +-alpha among them
    x.view(-1)[40:44] = torch.tensor([0.0, 2.5, -2.5, -0.0])
    upstream = torch.randn_like(x)
    _assert_activation_matches(x, alpha, upstream, bits, scheme, double_side)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_pact_equals_the_previous_implementation_in_every_dtype_and_layout(dtype: torch.dtype, layout: str) -> None:
    torch.manual_seed(1)
    x = (torch.randn(4, 6, 5, 5) * 3).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = (torch.randn(4, 6, 5, 10) * 3).to(dtype)[..., ::2]
    upstream = torch.randn(4, 6, 5, 5).to(dtype)
    for alpha in (torch.tensor(1.7), torch.tensor([-1.7]), torch.tensor(2.0, dtype=torch.float64)):
        for bits, scheme, double_side in ((4, "original", False), (8, "centered", True), (2, "modified", False)):
            _assert_activation_matches(x, alpha, upstream, bits, scheme, double_side)


def test_pact_gradient_of_a_sum_and_of_alpha_alone() -> None:
    """An expanded upstream gradient (from .sum()), and x without a gradient: alpha's alone."""
    x = torch.randn(3, 4, 5, 5) * 2
    for double_side in (False, True):
        alpha = torch.tensor(1.5, requires_grad=True)
        quantize_activation(x, alpha, 4, "original", double_side).sum().backward()
        ref_alpha = torch.tensor(1.5, requires_grad=True)
        reference_activation(x, ref_alpha, 4, "original", double_side).sum().backward()
        torch.testing.assert_close(alpha.grad, ref_alpha.grad, rtol=1e-6, atol=1e-6)


_FINITE = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(_FINITE, min_size=1, max_size=64), alpha=st.floats(0.01, 20.0),
       negative_alpha=st.booleans(), bits=st.integers(1, 8), scheme=st.sampled_from(list(SCHEMES)),
       double_side=st.booleans(), boundary=st.integers(-300, 300))
def test_pact_equals_the_previous_implementation_on_any_input(values, alpha, negative_alpha, bits, scheme,
                                                               double_side, boundary) -> None:
    levels = get_scheme(scheme).levels(bits)
    x = torch.tensor(values + [boundary * (2 if double_side else 1) * alpha / levels], dtype=torch.float32)
    upstream = torch.linspace(-1.0, 1.0, x.numel())
    _assert_activation_matches(x, torch.tensor(-alpha if negative_alpha else alpha), upstream, bits, scheme,
                               double_side)


def test_pact_saves_only_x_and_its_output() -> None:
    """What the node keeps for backward: x and its output (both kept by the layers around it anyway) and
    alpha; no copy of the activation (the clipping range is tested on x)."""
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    x = (torch.randn(8, 4, 6, 6) * 3).requires_grad_()
    alpha = torch.tensor(2.0, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = quantize_activation(x, alpha, 4)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 2 and all(t.dtype == torch.float32 for t in big)
    assert {t.data_ptr() for t in big} == {x.data_ptr(), out.data_ptr()}
    out.backward(torch.ones_like(out))
    assert x.grad is not None and alpha.grad is not None


def test_pact_at_full_precision_is_the_clip() -> None:
    x = torch.tensor([-1.0, 0.0, 0.3, 2.0, 5.0])
    torch.testing.assert_close(quantize_activation(x, torch.tensor(-2.0), 32), torch.tensor([0.0, 0.0, 0.3, 2.0, 2.0]))


# ---------------------------------------------------------------- weights
def _run_weight(fn, weight: Tensor, upstream: Tensor, *args) -> tuple[Tensor, Tensor]:
    weight = weight.detach().clone().requires_grad_()
    out = fn(weight, *args)
    out.backward(upstream)
    assert weight.grad is not None
    return out.detach(), weight.grad


def _assert_weight_matches(weight: Tensor, upstream: Tensor, bits: int, scheme: str, rescale: bool,
                           rescale_type: str) -> None:
    fan_out = weight.shape[0] * (weight[0, 0].numel() if weight.dim() > 2 else 1)
    out, grad = _run_weight(sat_weight, weight, upstream, bits, scheme, True, rescale, fan_out, rescale_type)
    ref_out, ref_grad = _run_weight(reference_sat_weight, weight, upstream, bits, scheme, rescale, fan_out,
                                    rescale_type)
    assert out.dtype == ref_out.dtype
    assert torch.equal(out, ref_out), (bits, scheme, rescale, rescale_type)
    scale = ref_grad.abs().max().item()
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6 * scale)
    if not rescale:
        assert torch.equal(quantize_weight(weight, bits, scheme), ref_out)


@pytest.mark.parametrize("rescale, rescale_type", [(False, "constant"), (True, "constant"), (True, "stddev")])
@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
def test_weight_quantizer_equals_the_previous_implementation(bits: int, scheme: str, rescale: bool,
                                                             rescale_type: str) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(16, 8, 3, 3) * 0.3
    upstream = torch.randn_like(weight)
    _assert_weight_matches(weight, upstream, bits, scheme, rescale, rescale_type)
    _assert_weight_matches(torch.randn(10, 24), torch.randn(10, 24), bits, scheme, rescale, rescale_type)


def test_weight_quantizer_shares_the_maximum_s_gradient_among_ties() -> None:
    """Several weights reach max|tanh W| (equal magnitudes, saturated tanh): torch.max's gradient is shared evenly."""
    weight = torch.randn(6, 5)
    weight[0, 0], weight[3, 2], weight[5, 4] = 1.5, -1.5, 1.5
    _assert_weight_matches(weight, torch.randn(6, 5), 4, "modified", True, "constant")
    saturated = torch.randn(6, 5) * 20  # many |tanh W| == 1 exactly
    _assert_weight_matches(saturated, torch.randn(6, 5), 3, "centered", False, "constant")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_weight_quantizer_in_other_dtypes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3).to(dtype)
    for rescale in (False, True):
        out, _ = _run_weight(sat_weight, weight, torch.ones_like(weight), 4, "modified", True, rescale, 72, "constant")
        ref, _ = _run_weight(reference_sat_weight, weight, torch.ones_like(weight), 4, "modified", rescale, 72,
                             "constant")
        assert out.dtype == dtype and torch.equal(out, ref)


@settings(max_examples=100, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.floats(-4.0, 4.0, allow_nan=False, width=32), min_size=2, max_size=40),
       bits=st.integers(1, 8), scheme=st.sampled_from(list(SCHEMES)), rescale=st.booleans(),
       rescale_type=st.sampled_from(["constant", "stddev"]))
def test_weight_quantizer_equals_the_previous_implementation_on_any_weight(values, bits, scheme, rescale,
                                                                           rescale_type) -> None:
    weight = torch.tensor(values).reshape(len(values), 1)
    if weight.abs().max() < 1e-20:
        # max|tanh W| = 0: both divide by zero; near float32's smallest normal (1.2e-38) the gradient, which
        # scales as 1 / max|tanh W|, overflows to inf in one order of the same operations and not in the other
        return
    if rescale and (weight.numel() < 2 or reference_weight(weight, bits, scheme).std() == 0):
        return  # a constant quantized weight: SAT divides by its zero std in both
    upstream = torch.linspace(-1.0, 1.0, weight.numel()).reshape_as(weight)
    _assert_weight_matches(weight, upstream, bits, scheme, rescale, rescale_type)


def test_weight_quantizer_without_gradient_and_sat_scale_agree() -> None:
    weight = torch.randn(12, 6)
    with torch.no_grad():
        q = quantize_weight(weight, 4, "centered")
    assert torch.equal(q, reference_weight(weight, 4, "centered"))
    scaled = sat_weight(weight, 4, "centered", True, True, 12)
    torch.testing.assert_close(scaled, q * sat_scale(q, weight, 12), rtol=0, atol=0)


# ---------------------------------------------------------------- the benchmark's other forms (--ablations)
@pytest.mark.parametrize("form", ["previous", "bool_mask"])
def test_the_benchmarks_other_forms_compute_the_same(form: str) -> None:
    """benchmarks.training.quant_overhead --ablations times other forms of the quantizers: they must compute
    what the shipped ones do, or the comparison would be of different work."""
    import adabits
    from benchmarks.training import quant_variants

    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", depth=8, bits_list=[4], num_classes=4, in_chans=1)
    x = torch.randn(4, 1, 8, 8)
    results = []
    for variant in (None, form):
        model.zero_grad()
        if variant is None:
            loss = model(x).square().sum()
        else:
            with quant_variants.quantizers(variant):
                loss = model(x).square().sum()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss, grads), (other_loss, other_grads) = results
    assert torch.equal(loss, other_loss)
    for grad, other in zip(grads, other_grads, strict=True):
        torch.testing.assert_close(grad, other, rtol=1e-5, atol=1e-6)
