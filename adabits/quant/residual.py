"""Int8Observer: a tensor rounded to 8 bits where an integer runtime must store it (the residual stream).

An integer runtime adds int8 tensors: a residual block's input, its branch output, its shortcut
and the sum each sit on an 8-bit grid. A model trained with float residual adds never saw that
rounding; below 8 bits it flips the codes of the next layer where a value sits near one of its
boundaries (the main job at 4 bits: 2.3% of the test images change their prediction). With
`quantize_residual` the models put an Int8Observer on each of these tensors. It rounds its input
onto an 8-bit grid, one per bit-width, that covers the range the tensor had in training (a running
min / max, as BN keeps its running statistics). The integer export (`adabits.export.integer_graph`)
stores each such tensor on the observer's own grid, so the exported graph rounds exactly where the
model does. Off (the default), the models hold nn.Identity there: no state, earlier checkpoints
load unchanged. A float start (`fp_pretrained_file`) has no ranges; the first training batches set
them (`convert.spread_fp_state_dict`). Any other checkpoint without them does not fit the model.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .bitwidth import BitPair, BitSwitchable, nearest_bits
from .grid import UINT8_MAX, Grid


def fake_quantize(x: Tensor, grid: Grid) -> Tensor:
    """`x` rounded onto `grid` (codes clipped to low..high), with a straight-through gradient."""
    return _rounded(x, torch.tensor(grid.scale), torch.tensor(float(grid.low)), torch.tensor(float(grid.high)))


def _rounded(x: Tensor, scale: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Rounded in float32 whatever x's dtype (under autocast, bf16), as the PACT quantizer is."""
    x32 = x.float()
    codes = torch.clamp(torch.round(x32 / scale), low, high)
    return (x32 + (codes * scale - x32).detach()).to(x.dtype)


def covering_on_device(row: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(scale, low code, high code) of `Grid.covering(low, high)` for a range row, computed where the row is.

    The same IEEE float64 operations as Grid.covering (and the same rounding of the step to float32), so
    the model rounds onto exactly the grid the integer export stores, without reading the range on the host.
    A NaN row (no range yet) gives a NaN scale."""
    low, high = row.double().unbind()
    low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
    scale = (torch.clamp(high - low, min=1e-8) / UINT8_MAX).float()
    bottom = torch.clamp(torch.round(low / scale.double()), min=-UINT8_MAX)
    return scale, bottom.float(), (bottom + UINT8_MAX).float()


class Int8Observer(BitSwitchable, nn.Module):
    """Rounds its input onto the 8-bit grid of its running range at the current bit-width.

    `ranges` (per bit-width: low, high) follow the training batches with `momentum`, as BN's
    running statistics do, and are fixed in eval mode. Until a first training batch at a bit-width
    has set its range, the observer passes its input through unchanged.
    """

    ranges: Tensor

    def __init__(self, bits_list: Iterable[object], momentum: float = 0.1) -> None:
        super().__init__()
        self._init_bits(bits_list)
        self.momentum = momentum
        self.register_buffer("ranges", torch.full((len(self.bits_list), 2), float("nan")))

    @property
    def calibrated(self) -> bool:
        """True once the current bit-width's range has been set by a training batch."""
        return not bool(torch.isnan(self.ranges[self.bits_index]).any())

    def _grid_or_none(self) -> Grid | None:
        low, high = self.ranges[self.bits_index].tolist()  # for readers (the export), never in forward
        return None if low != low or high != high else Grid.covering(low, high)  # NaN: no range yet

    def grid(self) -> Grid:
        """The 8-bit grid of the current bit-width."""
        grid = self._grid_or_none()
        if grid is None:
            raise ValueError("this 8-bit observer has no range at the current bit-width (no training batch has "
                             "run at it)")
        return grid

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                seen = torch.stack([x.min(), x.max()]).float()
                row = self.ranges[self.bits_index]
                row.copy_(torch.where(torch.isnan(row), seen, row + self.momentum * (seen - row)))
        # no host read: the grid is computed on the device, and in training the range was just set
        rounded = _rounded(x, *covering_on_device(self.ranges[self.bits_index]))
        return rounded if self.training else torch.where(torch.isnan(rounded), x, rounded)

    def add_bits(self, bits: BitPair) -> None:
        """A new bit-width takes the range of the nearest trained one."""
        source = self.ranges[nearest_bits(self.bits_list, bits)]
        self.ranges = torch.cat([self.ranges, source[None].clone()])
        super().add_bits(bits)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"
