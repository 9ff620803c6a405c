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
    def covering(cls, low: float, high: float) -> Grid:
        """The 8-bit grid of 256 codes whose range covers [low, high] (a calibrated tensor's range) and 0."""
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        scale = float(np.float32(max(high - low, 1e-8) / UINT8_MAX))
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
