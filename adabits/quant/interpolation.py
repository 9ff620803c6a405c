"""Where a bit-width that was never trained takes its per-bit state from (calibration, `add_bits`).

A new bit-width b copies its BN's gamma/beta from the nearest trained bit-width (`nearest_bits`)
and interpolates its PACT clipping level between the trained ones (`interpolate_alpha`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .bitwidth import BitPair, nearest_bits


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
        return levels[nearest_bits(pairs, target)].clone()
    lo = max(lower, key=lambda i: pairs[i][1])
    hi = min(upper, key=lambda i: pairs[i][1])
    if pairs[lo][1] == pairs[hi][1]:
        return levels[lo].clone()
    t = (bits - pairs[lo][1]) / (pairs[hi][1] - pairs[lo][1])
    return torch.exp((1 - t) * torch.log(levels[lo]) + t * torch.log(levels[hi]))
