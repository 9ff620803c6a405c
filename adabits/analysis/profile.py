"""MACs, parameters, BitOPs and model size per bit-width (docs/deploy.md), from one real forward.

Forward hooks on the leaf layers that do arithmetic (Conv2d, Linear, BatchNorm2d; quantized layers
are their subclasses) see the actual output shapes, so every layer is counted exactly once, with
the bits it really runs at: the first/last-layer policy (bitw_min, bita_min), weight_only and
full-precision layers included. A switchable BN runs one of its BatchNorm2d children per forward,
so only the active one is counted (the original lost BN costs and double-counted BN parameters).

Counting rules (per bit-width):
- MACs: conv Cin*Cout*kh*kw*Hout*Wout/groups, linear in*out, BN one multiply-add per output element.
- params: weights, biases, BN gamma and beta, and the PACT alpha the layer uses at that bit-width.
- BitOPs: MACs * weight bits * activation bits; BN runs at 32 x 32.
- size: quantized weights at their weight bits, everything else (bias, BN gamma/beta/mean/var,
  alpha) at 32 bits, in bytes: what one bit-width needs to be deployed on its own.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import Tensor, nn

from ..quant.bitwidth import FULL_PRECISION, Bits, bits_text, get_bits_list, use_bits
from ..quant.layers import QuantLayer


@dataclass
class LayerCost:
    name: str
    kind: str
    macs: int
    params: int
    weight_bits: int
    act_bits: int
    size_bits: int
    stored_values: int  # everything the layer stores at this bit-width (its float32 size / 4)

    @property
    def bitops(self) -> int:
        return self.macs * self.weight_bits * self.act_bits


@dataclass
class BitsProfile:
    """Totals of one bit-width (and its layers, for the verbose table)."""

    bits: object
    macs: int
    params: int
    bitops: int
    size_bytes: float
    float32_bytes: int  # the same layers stored in float32
    layers: list[LayerCost]

    def totals(self) -> dict[str, object]:
        out = asdict(self)
        out.pop("layers")
        return out


def _weight_cost(name: str, module: nn.Module, macs: int) -> LayerCost:
    """Cost of one conv or linear layer at the bits it currently runs at."""
    weight_bits = min(module.weight_bits, FULL_PRECISION) if isinstance(module, QuantLayer) else FULL_PRECISION
    act_bits = min(module.act_bits, FULL_PRECISION) if isinstance(module, QuantLayer) else FULL_PRECISION
    weights = cast(Tensor, module.weight).numel()
    bias = module.bias
    extras = bias.numel() if isinstance(bias, Tensor) else 0
    if isinstance(module, QuantLayer) and module.clips_input:
        extras += 1  # the one clipping level this bit-width uses
    kind = "linear" if isinstance(module, nn.Linear) else "conv"
    return LayerCost(name, kind, macs, weights + extras, weight_bits, act_bits,
                     weights * weight_bits + extras * FULL_PRECISION, weights + extras)


def _layer_cost(name: str, module: nn.Module, output: Tensor) -> LayerCost | None:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = module.in_channels // module.groups * kh * kw
        return _weight_cost(name, module, per_output * output.numel() // output.shape[0])
    if isinstance(module, nn.Linear):
        return _weight_cost(name, module, module.in_features * module.out_features)
    if isinstance(module, nn.BatchNorm2d):
        channels = module.num_features
        stored = 4 * channels  # gamma, beta, running mean and variance
        return LayerCost(name, "bn", output.numel() // output.shape[0], 2 * channels, FULL_PRECISION, FULL_PRECISION,
                         stored * FULL_PRECISION, stored)
    return None


@torch.no_grad()
def profile_model(model: nn.Module, input_size: tuple[int, ...], bits: Iterable[Bits | Mapping[str, Bits]] | None = None,
                  device: torch.device | str | None = None) -> list[BitsProfile]:
    """Profile `model` at every bit-width (or per-layer assignment) of `bits` (default: its bits_list) on one input of
    `input_size` (C, H, W), batch 1. The model's mode and bit-width are restored afterwards."""
    order = list(bits) if bits is not None else get_bits_list(model)
    if device is None:
        device = next(model.parameters()).device
    images = torch.zeros((1, *input_size), device=device)
    was_training = model.training
    model.eval()
    results = []
    try:
        for b in order:
            costs: list[LayerCost] = []

            def record(name: str, costs: list[LayerCost] = costs):
                def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
                    cost = _layer_cost(name, module, output)
                    if cost is not None:
                        costs.append(cost)
                return hook

            handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
            try:
                with use_bits(model, b):
                    model(images)
            finally:
                for handle in handles:
                    handle.remove()
            results.append(BitsProfile(
                bits=b, macs=sum(c.macs for c in costs), params=sum(c.params for c in costs),
                bitops=sum(c.bitops for c in costs), size_bytes=sum(c.size_bits for c in costs) / 8,
                float32_bytes=4 * sum(c.stored_values for c in costs), layers=costs))
    finally:
        model.train(was_training)
    return results


def _human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3f} {suffix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def profile_table(profiles: list[BitsProfile]) -> str:
    """One row per bit-width: MACs, params, BitOPs, size (bytes and relative to float32)."""
    cols = f"{'bits':>8} | {'MACs':>11} | {'params':>11} | {'BitOPs':>12} | {'size':>11} | {'vs float32':>10}"
    lines = [cols, "-" * len(cols)]
    for p in profiles:
        label = bits_text(p.bits)
        lines.append(f"{label:>8} | {_human(p.macs):>11} | {_human(p.params):>11} | {_human(p.bitops):>12} | "
                     f"{_human(p.size_bytes, 'B'):>11} | {p.size_bytes / p.float32_bytes:>9.3f}x")
    return "\n".join(lines)


def layer_table(profile: BitsProfile) -> str:
    """Per-layer costs of one bit-width (the original's model_profiling_verbose)."""
    cols = f"{'layer':<32} | {'kind':<6} | {'MACs':>11} | {'params':>9} | {'w bits':>6} | {'a bits':>6}"
    lines = [cols, "-" * len(cols)]
    for c in profile.layers:
        lines.append(f"{c.name:<32} | {c.kind:<6} | {_human(c.macs):>11} | {c.params:>9} | "
                     f"{c.weight_bits:>6} | {c.act_bits:>6}")
    return "\n".join(lines)
