"""Switchable LayerNorm: one LayerNorm per bit-width, as SwitchBatchNorm2d is for CNNs.

A transformer's LayerNorm normalizes each token by its own statistics, so unlike BatchNorm it has no
running statistics that differ between bit-widths; what a per-bit copy can learn is its own gain
and shift, which rescale what the next quantized layer sees at that bit-width. A plain LayerNorm's
state dict loads into every per-bit copy.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn

from .bitwidth import FULL_PRECISION, BitPair, BitSwitchable, nearest_bits

_LN_STATE_KEYS = ("weight", "bias")


def spread_into_copies(state_dict: dict[str, Tensor], prefix: str, keys: tuple[str, ...], copies: str,
                       count: int) -> None:
    """Move a plain norm's keys (prefix.weight, ...) to each of `count` per-bit copies (prefix.copies.i.weight),
    in place; keys the state dict already holds per copy are kept."""
    flat = {k: state_dict.pop(prefix + k) for k in keys if prefix + k in state_dict}
    for index in range(count):
        for name, value in flat.items():
            state_dict.setdefault(f"{prefix}{copies}.{index}.{name}", value)


class SwitchLayerNorm(BitSwitchable, nn.Module):
    """nn.LayerNorm with one (gain, shift) per bit-width, chosen by the current bit-width."""

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bits_list: Iterable[object] = (FULL_PRECISION,),
    ) -> None:
        nn.Module.__init__(self)
        self._init_bits(bits_list)
        self.norms = nn.ModuleList(
            nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
            for _ in self.bits_list)

    @property
    def active(self) -> nn.LayerNorm:
        """The LayerNorm this module runs at the current bit-width."""
        return cast(nn.LayerNorm, self.norms[self.bits_index])

    def forward(self, x: Tensor) -> Tensor:
        return self.active(x)

    def add_bits(self, bits: BitPair) -> None:
        """Add bit-width `bits` with a LayerNorm copied from the nearest trained bit-width."""
        source = cast(nn.LayerNorm, self.norms[nearest_bits(self.bits_list, bits)])
        factory = {"device": source.weight.device, "dtype": source.weight.dtype} if source.weight is not None else {}
        copy = nn.LayerNorm(source.normalized_shape, source.eps, source.elementwise_affine, source.bias is not None,
                            **factory)
        copy.load_state_dict(source.state_dict())
        self.norms.append(copy)
        super().add_bits(bits)

    def adapt_state_dict(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Spread a plain LayerNorm's keys (prefix.weight, prefix.bias) into every per-bit copy, in place."""
        spread_into_copies(state_dict, prefix, _LN_STATE_KEYS, "norms", len(self.norms))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override,no-untyped-def]
        """Accept a plain LayerNorm's state (`adapt_state_dict`)."""
        self.adapt_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{tuple(self.active.normalized_shape)}, bits_list={[b[0] if b[0] == b[1] else b for b in self.bits_list]}"
