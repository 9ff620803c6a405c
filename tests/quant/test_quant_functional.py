"""The DoReFa / SAT / PACT quantizers (adabits.quant.functional) against hand-computed values and their gradients."""

import math

import pytest
import torch

from adabits.quant.functional import (
    quantize_activation,
    quantize_codes,
    quantize_unit,
    quantize_weight,
    sat_scale,
)

SCHEMES = ("original", "modified", "centered")


def expected_levels(bits: int, scheme: str) -> torch.Tensor:
    k = torch.arange(2**bits, dtype=torch.float64)
    if scheme == "original":
        return k / (2**bits - 1)
    if scheme == "modified":
        return k / 2**bits
    return (k + 0.5) / 2**bits


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", range(1, 9))
def test_levels_are_the_spec_levels(bits: int, scheme: str) -> None:
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)
    q = quantize_unit(x, bits, scheme)
    torch.testing.assert_close(torch.unique(q), expected_levels(bits, scheme))


@pytest.mark.parametrize(
    "scheme, bits, x, expected",
    [
        ("original", 1, [0.0, 0.49, 0.51, 1.0], [0.0, 0.0, 1.0, 1.0]),
        ("original", 2, [0.0, 0.16, 0.17, 0.5, 0.84, 1.0], [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0]),
        ("modified", 2, [0.0, 0.24, 0.25, 0.74, 0.99, 1.0], [0.0, 0.0, 0.25, 0.5, 0.75, 0.75]),
        ("centered", 2, [0.0, 0.24, 0.25, 0.99, 1.0], [0.125, 0.125, 0.375, 0.875, 0.875]),
        ("modified", 3, [0.3, 0.126], [0.25, 0.125]),
        ("centered", 1, [0.2, 0.7, 1.0], [0.25, 0.75, 0.75]),
    ],
)
def test_hand_computed_values(scheme: str, bits: int, x: list, expected: list) -> None:
    q = quantize_unit(torch.tensor(x, dtype=torch.float64), bits, scheme)
    torch.testing.assert_close(q, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("scheme", ["modified", "centered"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_nested_codes_shift_right(bits: int, scheme: str) -> None:
    x = torch.rand(5000, dtype=torch.float64)
    high = quantize_codes(x, bits, scheme).long()
    low = quantize_codes(x, bits - 1, scheme).long()
    assert torch.equal(low, high >> 1)


def test_original_scheme_is_not_nested() -> None:
    x = torch.rand(5000, dtype=torch.float64)
    assert not torch.equal(quantize_codes(x, 3, "original").long(), quantize_codes(x, 4, "original").long() >> 1)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_straight_through_gradient(scheme: str) -> None:
    x = torch.rand(100, requires_grad=True)
    upstream = torch.randn(100)
    (quantize_unit(x, 3, scheme) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, upstream)


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="allowed: original, modified, centered"):
        quantize_unit(torch.rand(3), 4, "uniform")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_levels(bits: int, scheme: str) -> None:
    w = torch.randn(64, 32, 3, 3)
    q = quantize_weight(w, bits, scheme)
    assert torch.unique(q).numel() <= 2**bits
    assert q.min() >= -1 and q.max() <= 1
    levels = 2 * expected_levels(bits, scheme).float() - 1
    assert torch.isin(torch.unique(q), levels).all()


def test_centered_weights_are_symmetric() -> None:
    levels = 2 * expected_levels(3, "centered") - 1
    torch.testing.assert_close(levels, -levels.flip(0))
    assert 0.0 not in levels.tolist()


def test_full_precision_weight_clamp() -> None:
    w = torch.randn(10, 10)
    torch.testing.assert_close(quantize_weight(w, 32, clamp=True), torch.tanh(w) / torch.tanh(w).abs().max())
    assert quantize_weight(w, 32, clamp=False) is w


def test_weight_gradient_flows_through_tanh_and_max() -> None:
    w = torch.randn(8, 8, requires_grad=True)
    quantize_weight(w, 4).pow(2).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_sat_scale_sets_the_standard_deviation() -> None:
    w = torch.randn(64, 10)
    q = quantize_weight(w, 4)
    scaled = q * sat_scale(q, w, fan_out=64, rescale_type="constant")
    assert math.isclose(scaled.std().item(), 1 / math.sqrt(64), rel_tol=1e-4)
    scaled = q * sat_scale(q, w, fan_out=64, rescale_type="stddev")
    assert math.isclose(scaled.std().item(), w.std().item(), rel_tol=1e-4)
    with pytest.raises(ValueError, match="rescale_type"):
        sat_scale(q, w, 64, "median")


def reference_pact(x: torch.Tensor, alpha: torch.Tensor, bits: int, scheme: str, double_side: bool) -> torch.Tensor:
    """PACT activation quantization (Choi et al. 2018) written as plain autograd operations."""
    a = alpha.abs()
    if double_side:
        clipped = torch.maximum(torch.minimum(x, a), -a)
        return a * (2 * quantize_unit((clipped / a + 1) / 2, bits, scheme) - 1)
    return a * quantize_unit(torch.minimum(torch.relu(x), a) / a, bits, scheme)


@pytest.mark.parametrize("double_side", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pact_matches_the_composite_form(bits: int, scheme: str, double_side: bool) -> None:
    torch.manual_seed(bits)
    x = (torch.randn(2000, dtype=torch.float64) * 3).requires_grad_()
    alpha = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    alpha_ref = alpha.detach().clone().requires_grad_()
    upstream = torch.randn(2000, dtype=torch.float64)
    out = quantize_activation(x, alpha, bits, scheme, double_side)
    (out * upstream).sum().backward()
    out_ref = reference_pact(x_ref, alpha_ref, bits, scheme, double_side)
    (out_ref * upstream).sum().backward()
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(alpha.grad, alpha_ref.grad)


def test_pact_levels_and_clipping() -> None:
    x = torch.tensor([-1.0, 0.0, 0.3, 0.9, 1.9, 2.0, 5.0])
    out = quantize_activation(x, torch.tensor(2.0), 2, "original")
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.0, 2 / 3, 2.0, 2.0, 2.0]))
    out = quantize_activation(x, torch.tensor(-2.0), 32)  # |alpha|, clipping only
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.3, 0.9, 1.9, 2.0, 2.0]))
    out = quantize_activation(x, torch.tensor(0.5), 32, double_side=True)
    torch.testing.assert_close(out, torch.tensor([-0.5, 0.0, 0.3, 0.5, 0.5, 0.5, 0.5]))


@pytest.mark.parametrize("double_side", [False, True])
def test_alpha_gradient_against_finite_differences(double_side: bool) -> None:
    """With the codes held fixed (a step too small to move any), alpha * q is linear in alpha, so
    the finite difference is exact. The STE gradient equals it outside the clipping range and
    differs inside by exactly sum(g * x) / alpha: the STE treats alpha * (x / alpha) as constant."""
    torch.manual_seed(0)
    x = torch.randn(4000, dtype=torch.float64) * 2
    upstream = torch.randn(4000, dtype=torch.float64)
    value, eps = 1.7, 1e-7
    alpha = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (quantize_activation(x, alpha, 8, "original", double_side) * upstream).sum().backward()

    def loss(level: float) -> float:
        out = quantize_activation(x, torch.tensor(level, dtype=torch.float64), 8, "original", double_side)
        return float((out * upstream).sum())

    low = -value if double_side else 0.0
    unit = lambda level: ((x.clamp(-level, level) / level + 1) / 2) if double_side else x.clamp(0, level) / level  # noqa: E731
    assert torch.equal(quantize_codes(unit(value + eps), 8, "original"), quantize_codes(unit(value - eps), 8, "original"))
    numeric = (loss(value + eps) - loss(value - eps)) / (2 * eps)
    inside = (x > low) & (x < value)
    ste_term = float((upstream * x * inside).sum()) / value
    assert math.isclose(alpha.grad.item(), numeric - ste_term, rel_tol=1e-5)

    clipped = x.abs() + value  # every element above alpha: no STE term at all
    alpha = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (quantize_activation(clipped, alpha, 8, "original", double_side) * upstream).sum().backward()
    shifted = [float((quantize_activation(clipped, torch.tensor(v, dtype=torch.float64), 8, "original", double_side)
                      * upstream).sum()) for v in (value + eps, value - eps)]
    assert math.isclose(alpha.grad.item(), (shifted[0] - shifted[1]) / (2 * eps), rel_tol=1e-6)


def test_alpha_gradient_matches_unquantized_pact_in_smooth_region() -> None:
    """With pact_fp (no rounding) the output is piecewise linear in alpha: finite differences apply."""
    x = torch.randn(1000, dtype=torch.float64) * 3
    upstream = torch.randn(1000, dtype=torch.float64)
    alpha = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (quantize_activation(x, alpha, 32) * upstream).sum().backward()
    eps = 1e-6

    def loss(value: float) -> float:
        return float((quantize_activation(x, torch.tensor(value, dtype=torch.float64), 32) * upstream).sum())

    assert math.isclose(alpha.grad.item(), (loss(1.3 + eps) - loss(1.3 - eps)) / (2 * eps), rel_tol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_quantized_in_float32(dtype: torch.dtype) -> None:
    x = torch.rand(1000) * 4
    out = quantize_activation(x.to(dtype), torch.tensor(3.0), 8)
    assert out.dtype == dtype
    reference = quantize_activation(x.to(dtype).float(), torch.tensor(3.0), 8)
    torch.testing.assert_close(out.float(), reference.to(dtype).float())
    w = torch.randn(16, 16)
    assert quantize_weight(w.to(dtype), 8).dtype == dtype


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_float32_channels_last_matches_float64(bits: int) -> None:
    """The hand-written node in float32 and NHWC layout agrees with the float64 computation."""
    torch.manual_seed(bits)
    x = (torch.randn(8, 4, 5, 5) * 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    alpha = torch.tensor(2.5, requires_grad=True)
    upstream = torch.randn(8, 4, 5, 5)
    (quantize_activation(x, alpha, bits) * upstream).sum().backward()
    x64 = x.detach().double().requires_grad_()
    alpha64 = alpha.detach().double().requires_grad_()
    out64 = quantize_activation(x64, alpha64, bits)
    (out64 * upstream.double()).sum().backward()
    torch.testing.assert_close(quantize_activation(x.detach(), alpha.detach(), bits).double(), out64.detach())
    torch.testing.assert_close(x.grad.double(), x64.grad)
    torch.testing.assert_close(alpha.grad.double(), alpha64.grad, rtol=1e-5, atol=1e-4)
