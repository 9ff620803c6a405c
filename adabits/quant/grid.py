"""How one tensor of an integer graph is stored: integer codes on a grid, and their int8 / uint8 forms."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT8_MIN, INT8_MAX, UINT8_MAX = -128, 127, 255


@dataclass(frozen=True)
class Grid:
    """Values `code * scale` for integer codes `low..high` (at most 256 of them).

    A runtime stores a code with an offset: ExecuTorch/XNNPACK as int8 `q = code + int8_offset`,
    ONNX Runtime as uint8 `u = code + uint8_offset`. The int8 form puts `high` at 127, so the
    kernels' own saturation is the clip at the top (PACT's clip at alpha, below 8 bits too); the
    clip at the bottom is a ReLU that the kernels fuse.
    """

    scale: float
    low: int
    high: int

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.low <= 0 <= self.high and self.high - self.low <= UINT8_MAX):
            raise ValueError(f"a grid needs a positive scale and 0 in low..high, at most 256 codes; got {self}")

    @classmethod
    def codes(cls, scale: float, max_code: int) -> Grid:
        """Unsigned codes 0..max_code (a PACT input, the raw image)."""
        return cls(float(np.float32(scale)), 0, max_code)

    @classmethod
    def covering(cls, low: float, high: float, align: Grid | None = None, min_scale: float = 0.0) -> Grid:
        """The 8-bit grid of 256 codes whose range covers [low, high] (a calibrated tensor's range) and 0.

        With `align` (the grid the tensor is requantized onto next), the step is align.scale / k for
        the largest odd k that still covers the range: every boundary between two codes of `align`
        then falls on a boundary of this grid, so rounding here and then onto `align` gives the
        codes rounding onto `align` directly would (k = 1 when nothing finer fits; no alignment when
        even that would not cover the range). `min_scale` bounds the step from below (a tensor that was
        all zeros in calibration has no range of its own)."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        width = max(high - low, min_scale * UINT8_MAX, 1e-8)
        scale = float(np.float32(width / UINT8_MAX))
        if align is not None:
            k = int(UINT8_MAX * align.scale / width)
            k -= 1 - k % 2  # odd
            while k >= 1 and align.scale / k >= min_scale:
                fine = float(np.float32(align.scale / k))
                if np.ceil(high / fine) - np.floor(low / fine) <= UINT8_MAX:
                    bottom = int(np.floor(low / fine))
                    return cls(fine, bottom, bottom + UINT8_MAX)
                k -= 2
        bottom = max(int(np.round(low / scale)), -UINT8_MAX)
        return cls(scale, bottom, bottom + UINT8_MAX)

    @property
    def int8_offset(self) -> int:
        return INT8_MAX - self.high

    @property
    def uint8_offset(self) -> int:
        return -self.low

    @property
    def nonnegative(self) -> bool:
        return self.low >= 0
