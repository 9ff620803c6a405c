"""Which bit-widths a joint step trains, in which order: all of them, or the sandwich rule's sample.

A joint step costs one forward and backward per bit-width. For a long bits_list the sandwich rule
of universally slimmable networks (Yu & Huang, ICCV 2019) trains per step the highest and the lowest
bit-width and `middle` others drawn at random. The draw depends only on the run's seed and the
step's index in the run, so every process of a distributed run draws the same bit-widths (their
gradients meet in one all-reduce) and a resumed run draws what the uninterrupted one drew.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..quant.assignment import quantized_layers
from ..quant.bitwidth import Bits, get_bits_list, parse_bits

#: the draw's own stream: the seed and the step mixed with a salt, so that it never starts where the data
#: loaders' shuffles (seeded from random_seed and the epoch) start
_SALT = 0x53_41_4E_44  # "SAND"
_MIXED_SALT = 0x4D_49_58_44  # "MIXD": the per-layer draws' stream, apart from the sandwich's
_STEP_STRIDE = 1_000_003


def highest_first(bits: Sequence[Bits]) -> list[Bits]:
    """`bits` ordered from the highest bit-width down, by (weight bits, activation bits); the config
    checks that the highest and the lowest have the most and the fewest bits of both kinds."""
    return sorted(bits, key=parse_bits, reverse=True)


class StepBits:
    """The bit-widths of each step: `bits` in their order (or highest first), or a sandwich sample.

    `middle` None trains every bit-width; an int K trains the highest, the lowest and K of the others.
    """

    def __init__(self, bits: Sequence[Bits], middle: int | None = None, seed: int = 0,
                 order_highest_first: bool = False) -> None:
        if middle is not None and not 0 <= middle < len(bits) - 2:
            raise ValueError(f"sandwich_middle must be from 0 to {len(bits) - 3} for {len(bits)} bit-widths "
                             f"(the highest and the lowest are always trained), got {middle}")
        self.middle = middle
        self.seed = seed
        self.ordered = highest_first(bits) if (order_highest_first or middle is not None) else list(bits)

    @property
    def per_step(self) -> int:
        """How many bit-widths each step trains (forward and backward passes per batch)."""
        return len(self.ordered) if self.middle is None else self.middle + 2

    def at(self, step: int) -> list[Bits]:
        """The bit-widths of the run's step `step` (counted from 0 over all epochs)."""
        if self.middle is None:
            return list(self.ordered)
        generator = torch.Generator().manual_seed((self.seed * _STEP_STRIDE + step) ^ _SALT)
        inner = self.ordered[1:-1]
        drawn = sorted(torch.randperm(len(inner), generator=generator)[: self.middle].tolist())
        return [self.ordered[0], *(inner[i] for i in drawn), self.ordered[-1]]


def random_assignments(model: nn.Module, count: int, seed: int, step: int) -> list[dict[str, Bits]]:
    """`count` per-layer assignments for step `step`: each quantized layer at a bit-width of the model drawn
    uniformly. Like the sandwich draw, it depends only on (seed, step), so every process draws the same and a
    resumed run draws what the uninterrupted one drew."""
    if count <= 0:
        return []
    layers, bits = list(quantized_layers(model)), get_bits_list(model)
    generator = torch.Generator().manual_seed((seed * _STEP_STRIDE + step) ^ _MIXED_SALT)
    draws = torch.randint(len(bits), (count, len(layers)), generator=generator).tolist()
    return [{layer: bits[i] for layer, i in zip(layers, row)} for row in draws]
