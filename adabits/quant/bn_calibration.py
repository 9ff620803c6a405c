"""Run a trained model at a bit-width it was not trained for: add it, then re-estimate BN statistics.

The original code silently used the BN and alpha of index 0 for an unknown bit-width, and listed
`bn_calib` without building it. Here a new bit-width b gets, in every layer (each layer's own
`add_bits`, rules in adabits.quant.interpolation):
- its own BatchNorm2d per SwitchBatchNorm2d: gamma/beta copied from the nearest trained bit-width
  (shared, with `stats_sharing`), running statistics reset and re-estimated on data; likewise its own
  copy of each SwitchNorm (a BatchNorm1d's statistics re-estimated too);
- its own PACT clipping level per switchable-alpha layer, chosen by `interpolate_alpha`.
Afterwards b is part of every layer's bits_list, so `set_bits(model, b)` accepts it and the
model's state dict (and any checkpoint of it) holds the new per-bit entries at the end.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import BitWidthError, CalibrationError
from .bitwidth import BitSwitchable, format_bits, parse_bits, switchable_modules, use_bits
from .interpolation import interpolate_alpha
from .norms import SwitchableNorm

__all__ = ["add_bits", "calibrate_bn", "interpolate_alpha", "recalibrate_bn"]


def estimated_bns(modules: Sequence[BitSwitchable]) -> list[_BatchNorm]:
    """The active BNs of the switchable norms whose running statistics calibration estimates."""
    return [bn for m in modules if isinstance(m, SwitchableNorm)
            and (bn := m.estimated_statistics) is not None]


def add_bits(model: nn.Module, bits: object) -> list[_BatchNorm]:
    """Make `bits` an allowed bit-width of every switchable module (structure only, no data).

    Returns the new BatchNorm modules (their statistics are fresh and must be estimated).
    Used by `calibrate_bn` and when loading a checkpoint that holds calibrated bit-widths.
    """
    pair = parse_bits(bits)
    modules = switchable_modules(model)
    if not modules:
        raise BitWidthError("add_bits needs a model with bit-switchable layers")
    if pair in modules[0].bits_list:
        raise BitWidthError(f"bit-width {format_bits(pair)} is already one of the model's: "
                            f"{[format_bits(p) for p in modules[0].bits_list]}")
    for module in modules:
        module.add_bits(pair)
    with use_bits(model, format_bits(pair)):
        return estimated_bns(modules)


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
        raise BitWidthError("recalibrate_bn needs a model with bit-switchable layers")
    if pair not in modules[0].bits_list:
        allowed = [format_bits(p) for p in modules[0].bits_list]
        raise BitWidthError(f"recalibrate_bn: bit-width {format_bits(pair)} is not one of the model's: {allowed}")
    with use_bits(model, format_bits(pair)):
        bns = estimated_bns(modules)
    _estimate_bn_stats(model, bits, bns, loader, num_batches)
    return model


def _check_num_batches(num_batches: int) -> None:
    if num_batches < 1:
        raise CalibrationError(f"num_batches must be at least 1, got {num_batches}")


@torch.no_grad()
def _estimate_bn_stats(model: nn.Module, bits: object, bns: Sequence[_BatchNorm], loader: Iterable,
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
        with use_bits(model, format_bits(parse_bits(bits))):
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
        raise CalibrationError("BN calibration got no batches from the loader")
