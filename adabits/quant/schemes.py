"""The three quantization schemes of AdaBits as objects: what each one's codes are and mean.

A scheme maps x in [0, 1] at b bits to an integer code k and back to a value q(x) in [0, 1]:

| scheme     | levels a  | code k                      | value q(x)    | seed's name |
|------------|-----------|-----------------------------|---------------|-------------|
| `original` | 2^b - 1   | round(a x)                  | k / a         | DoReFa      |
| `modified` | 2^b       | min(floor(a x), a - 1)      | k / a         | AdaBits     |
| `centered` | 2^b       | min(floor(a x), a - 1)      | (k + 1/2) / a | AdaBits     |

(AdaBits: Jin, Yang and Liao, CVPR 2020; DoReFa-Net: Zhou et al., 2016.) Everything else that
readers of a quantized layer need is derived here, once: the signed integer form of a weight
2 q - 1 = m * step (what an int8 kernel multiplies), and whether the b-bit codes are the B-bit
codes shifted right by B - b bits (`nested`, what lets one stored weight serve every bit-width).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor

from ..errors import QuantOptionError

SchemeName = Literal["original", "modified", "centered"]


@dataclass(frozen=True)
class QuantScheme:
    """One uniform quantizer of [0, 1]: its levels, its rounding and the offset of its values."""

    name: str
    minus_one: bool  # levels 2^b - 1 (the top code is exactly 1) instead of 2^b
    rounds: bool  # round to the nearest code; otherwise floor, clamped to the top code
    offset: float  # added to the code before scaling: 1/2 centres each value in its bin

    def levels(self, bits: int) -> float:
        """The multiplier a: codes are a x, rounded."""
        return float(2**bits - 1) if self.minus_one else float(2**bits)

    def max_code(self, bits: int) -> int:
        """The largest code: codes run over 0..max_code."""
        return 2**bits - 1

    def codes_from_units(self, units: Tensor, bits: int) -> Tensor:
        """Integer codes (as floats) of x given in units of one level, `units` = a x (clamped here)."""
        codes = units.clamp(0.0, float(self.max_code(bits)))
        return codes.round_() if self.rounds else codes.floor_()

    def codes(self, x: Tensor, bits: int) -> Tensor:
        """Integer codes k (as floats) of x in [0, 1]; no gradient (used inside straight-through functions)."""
        return self.codes_from_units(x * self.levels(bits), bits)

    def values(self, codes: Tensor, bits: int) -> Tensor:
        """The quantized values q in [0, 1] that codes stand for."""
        a = self.levels(bits)
        return (codes + self.offset) / a if self.offset else codes / a

    def signed(self, codes: Tensor, bits: int) -> tuple[Tensor, float]:
        """(m, step) with 2 q - 1 = m * step for integer m (int64) and the largest such step.

        2 q - 1 = (2 k + 2 offset - a) / a; when 2 offset - a is even every numerator is, and
        halving it keeps `modified` codes within int8 at 8 bits (k - 128); `centered` and
        `original` numerators are odd, up to 2^b - 1 in magnitude.
        """
        a = self.levels(bits)
        shift = int(2 * self.offset - a)
        numerator = 2 * codes.to(torch.int64) + shift
        if shift % 2 == 0:
            return numerator // 2, 2.0 / a
        return numerator, 1.0 / a

    @property
    def nested(self) -> bool:
        """True when the b-bit code of x is its B-bit code shifted right by B - b bits, for every b < B."""
        return not self.minus_one and not self.rounds

    @property
    def quantize_linear_exact(self) -> bool:
        """True when value = code * (1 / a) with code = round(a x): what ONNX QuantizeLinear computes."""
        return self.rounds and self.offset == 0


ORIGINAL = QuantScheme("original", minus_one=True, rounds=True, offset=0.0)
MODIFIED = QuantScheme("modified", minus_one=False, rounds=False, offset=0.0)
CENTERED = QuantScheme("centered", minus_one=False, rounds=False, offset=0.5)

SCHEMES: MappingProxyType[str, QuantScheme] = MappingProxyType({s.name: s for s in (ORIGINAL, MODIFIED, CENTERED)})


def get_scheme(scheme: str | QuantScheme) -> QuantScheme:
    """The scheme object of a name (or the object itself); QuantOptionError lists the allowed names."""
    if isinstance(scheme, QuantScheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise QuantOptionError(f"unknown quantization scheme {scheme!r}; allowed: {', '.join(SCHEMES)}") from None
