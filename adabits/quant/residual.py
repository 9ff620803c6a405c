"""QuantAdd: a residual add that can compute what an integer runtime computes (8-bit inputs and output).

An integer runtime adds int8 tensors: the branch output, the shortcut and the sum each sit on an
8-bit grid. A model trained with float residual adds never saw that rounding; below 8 bits it flips
the codes of the next layer where a value sits near one of its boundaries (the main job at 4 bits:
2.3% of the test images change their prediction). With `quantize_residual` the add fake-quantizes
its two inputs and its output onto 8-bit grids, one set per bit-width: each grid covers the range
the tensor had in training (a running min / max, as BN keeps its running statistics), and the
integer export (`adabits.export.integer_graph`) reads these grids from the layer. Disabled (the
default), it is a plain add and has no state, so earlier checkpoints load unchanged.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .bitwidth import BitPair, BitSwitchable, nearest_bits
from .grid import Grid

#: what the add quantizes, in the order of its range rows
TENSORS = ("branch", "shortcut", "output")


def fake_quantize(x: Tensor, grid: Grid) -> Tensor:
    """`x` rounded onto `grid` (codes clipped to low..high), with a straight-through gradient."""
    codes = torch.clamp(torch.round(x / grid.scale), grid.low, grid.high)
    return x + (codes * grid.scale - x).detach()


class QuantAdd(BitSwitchable, nn.Module):
    """`branch + shortcut` (then ReLU with `relu`), each of the three fake-quantized to 8 bits when enabled.

    The ranges (per bit-width: [branch, shortcut, output] x [low, high]) follow the training batches
    with `momentum`, as BN's running statistics do, and are fixed in eval mode. Until a first training
    batch has set them, the add does not quantize.
    """

    ranges: Tensor

    def __init__(self, bits_list: Iterable[object], enabled: bool = False, relu: bool = False,
                 momentum: float = 0.1) -> None:
        super().__init__()
        self._init_bits(bits_list)
        self.enabled = enabled
        self.relu = relu
        self.momentum = momentum
        if enabled:
            self.register_buffer("ranges", torch.full((len(self.bits_list), len(TENSORS), 2), float("nan")))

    @property
    def calibrated(self) -> bool:
        """True once the current bit-width's ranges have been set by a training batch."""
        return self.enabled and not bool(torch.isnan(self.ranges[self.bits_index]).any())

    def grids(self) -> tuple[Grid, Grid, Grid]:
        """The (branch, shortcut, output) grids of the current bit-width."""
        if not self.calibrated:
            raise ValueError("this residual add has no ranges at the current bit-width (quantize_residual off, "
                             "or no training batch has run at it)")
        rows = self.ranges[self.bits_index].tolist()
        return tuple(Grid.covering(low, high) for low, high in rows)  # type: ignore[return-value]

    @torch.no_grad()
    def _observe(self, index: int, x: Tensor) -> None:
        seen = torch.stack([x.min(), x.max()]).float()
        row = self.ranges[self.bits_index, index]
        row.copy_(torch.where(torch.isnan(row), seen, row + self.momentum * (seen - row)))

    def forward(self, branch: Tensor, shortcut: Tensor) -> Tensor:
        if not self.enabled:
            out = branch + shortcut
            return torch.relu(out) if self.relu else out
        if self.training:
            self._observe(0, branch)
            self._observe(1, shortcut)
        if not self.calibrated:
            out = branch + shortcut
            return torch.relu(out) if self.relu else out
        grid_branch, grid_shortcut, _ = self.grids()
        out = fake_quantize(branch, grid_branch) + fake_quantize(shortcut, grid_shortcut)
        if self.relu:
            out = torch.relu(out)
        if self.training:
            self._observe(2, out)
        return fake_quantize(out, self.grids()[2])

    def add_bits(self, bits: BitPair) -> None:
        """A new bit-width takes the ranges of the nearest trained one."""
        if self.enabled:
            source = self.ranges[nearest_bits(self.bits_list, bits)]
            self.ranges = torch.cat([self.ranges, source[None].clone()])
        super().add_bits(bits)

    def adapt_state_dict(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """A checkpoint without ranges (a float model, or one trained without quantize_residual) keeps
        the current (unset) ones: the first training batches set them."""
        if self.enabled and prefix + "ranges" not in state_dict:
            state_dict[prefix + "ranges"] = self.ranges.clone()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override,no-untyped-def]
        self.adapt_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, relu={self.relu}"
