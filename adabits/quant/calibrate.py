"""Run a trained model at a bit-width it was not trained for: add it, then re-estimate BN statistics.

SPEC section 5: the original silently used the BN and alpha of index 0 for an unknown bit-width, and
listed `bn_calib` without building it. Here a new bit-width b gets, in every layer:
- its own BatchNorm2d per SwitchBatchNorm2d: gamma/beta copied from the nearest trained bit-width
  (shared, with `stats_sharing`), running statistics reset and re-estimated on data;
- its own PACT clipping level per switchable-alpha layer, chosen by `interpolate_alpha`.
Afterwards b is part of every layer's bits_list, so `set_bits(model, b)` accepts it and the
model's state dict (and any checkpoint of it) holds the new per-bit entries at the end.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .bitwidth import BitPair, format_bits, parse_bits, switchable_modules, use_bits
from .layers import QuantLayerMixin, SwitchBatchNorm2d


def _nearest(pairs: Sequence[BitPair], target: BitPair) -> int:
    """Index of the trained bit-width closest to `target` in activation bits (ties: the higher one)."""
    return min(range(len(pairs)), key=lambda i: (abs(pairs[i][1] - target[1]), -pairs[i][1]))


def interpolate_alpha(alphas: Tensor, pairs: Sequence[BitPair], target: BitPair) -> Tensor:
    """The clipping level for activation bits b from the trained ones (|alpha| of each entry).

    Rule: between the nearest trained activation bit-widths below and above b, log(alpha) is
    interpolated linearly in bits (alpha grows roughly geometrically as bits shrink and the
    quantizer trades range for resolution); outside the trained range the nearest level is copied.
    """
    levels = alphas.detach().abs()
    bits = target[1]
    lower = [i for i, p in enumerate(pairs) if p[1] <= bits]
    upper = [i for i, p in enumerate(pairs) if p[1] >= bits]
    if not lower or not upper:
        return levels[_nearest(pairs, target)].clone()
    lo = max(lower, key=lambda i: pairs[i][1])
    hi = min(upper, key=lambda i: pairs[i][1])
    if pairs[lo][1] == pairs[hi][1]:
        return levels[lo].clone()
    t = (bits - pairs[lo][1]) / (pairs[hi][1] - pairs[lo][1])
    return torch.exp((1 - t) * torch.log(levels[lo]) + t * torch.log(levels[hi]))


def _add_to_bn(module: SwitchBatchNorm2d, trained: Sequence[BitPair], pair: BitPair) -> nn.BatchNorm2d | None:
    """Append a BatchNorm2d for `pair`; None when one BN serves every bit-width (switchbn off)."""
    if len(module.bn) == 1:
        return None
    source = module.bn[_nearest(trained, pair)]
    bn = nn.BatchNorm2d(module.num_features, source.eps, source.momentum,
                        device=source.running_mean.device, dtype=source.running_mean.dtype)
    if module.stats_sharing:
        bn.weight, bn.bias = module.bn[0].weight, module.bn[0].bias
    else:
        with torch.no_grad():
            bn.weight.copy_(source.weight)
            bn.bias.copy_(source.bias)
    bn.train(module.training)
    module.bn.append(bn)
    return bn


def _add_to_alpha(layer: QuantLayerMixin, trained: Sequence[BitPair], pair: BitPair) -> None:
    if layer.alpha is None or layer.alpha.numel() == 1:
        return
    new = interpolate_alpha(layer.alpha, trained, pair).reshape(1)
    layer.alpha = nn.Parameter(torch.cat([layer.alpha.detach(), new.to(layer.alpha)]),
                               requires_grad=layer.alpha.requires_grad)


def add_bits(model: nn.Module, bits: object) -> list[nn.BatchNorm2d]:
    """Make `bits` an allowed bit-width of every switchable module (structure only, no data).

    Returns the new BatchNorm2d modules (their statistics are fresh and must be estimated).
    Used by `calibrate_bn` and when loading a checkpoint that holds calibrated bit-widths.
    """
    pair = parse_bits(bits)
    modules = switchable_modules(model)
    if not modules:
        raise ValueError("add_bits needs a model with bit-switchable layers")
    if pair in modules[0].bits_list:
        raise ValueError(f"bit-width {format_bits(pair)} is already one of the model's: "
                         f"{[format_bits(p) for p in modules[0].bits_list]}")
    new_bns = []
    for module in modules:
        trained = module.bits_list
        if isinstance(module, SwitchBatchNorm2d):
            bn = _add_to_bn(module, trained, pair)
            if bn is not None:
                new_bns.append(bn)
        elif isinstance(module, QuantLayerMixin):
            _add_to_alpha(module, trained, pair)
        module.bits_list = (*trained, pair)
        module.switch_bits(module.bits)  # refresh bits_index against the longer list
    return new_bns


def calibrate_bn(model: nn.Module, bits: object, loader: Iterable, num_batches: int = 50) -> nn.Module:
    """Add bit-width `bits` to a trained model and estimate its BN statistics on `num_batches` batches.

    The new BNs' running statistics are reset and re-estimated as a cumulative average
    (momentum=None) over train-mode forwards without gradients; every other module stays in
    eval mode, so no trained statistic changes. The model's mode and bit-width are restored.
    `loader` yields inputs or (inputs, labels) batches. Returns the model.
    """
    _check_num_batches(num_batches)
    _estimate_bn_stats(model, bits, add_bits(model, bits), loader, num_batches)
    return model


def recalibrate_bn(model: nn.Module, bits: object, loader: Iterable, num_batches: int = 50) -> nn.Module:
    """Re-estimate the BN statistics that bit-width `bits` (already one of the model's) runs with.

    For a model whose per-bit BNs were never trained at `bits`, e.g. a model trained at 8 bits
    alone and then given more bit-widths by `load_fp_state_dict` ("direct adaptation"). BNs
    shared by every bit-width (switchbn off) are left alone: re-estimating them would change
    the other bit-widths too. Same procedure and restorations as `calibrate_bn`.
    """
    _check_num_batches(num_batches)
    pair = parse_bits(bits)
    modules = switchable_modules(model)
    if not modules:
        raise ValueError("recalibrate_bn needs a model with bit-switchable layers")
    if pair not in modules[0].bits_list:
        allowed = [format_bits(p) for p in modules[0].bits_list]
        raise ValueError(f"recalibrate_bn: bit-width {format_bits(pair)} is not one of the model's: {allowed}")
    index = modules[0].bits_list.index(pair)
    bns = [m.bn[index] for m in modules if isinstance(m, SwitchBatchNorm2d) and len(m.bn) > 1]
    _estimate_bn_stats(model, bits, bns, loader, num_batches)
    return model


def _check_num_batches(num_batches: int) -> None:
    if num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")


@torch.no_grad()
def _estimate_bn_stats(model: nn.Module, bits: object, bns: Sequence[nn.BatchNorm2d], loader: Iterable,
                       num_batches: int) -> None:
    """Reset `bns` and re-estimate them as a cumulative average, everything else in eval mode."""
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        with use_bits(model, bits):
            for batch in loader:
                if seen >= num_batches:
                    break
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                seen += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    if seen == 0 and bns:
        raise ValueError("BN calibration got no batches from the loader")
