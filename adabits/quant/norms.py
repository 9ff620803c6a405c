"""Switchable normalization other than BatchNorm2d: one copy of the norm per bit-width.

SwitchBatchNorm2d (layers.py) is AdaBits' switchable BN for CNNs. Transformers and MLPs normalize with
LayerNorm (or RMSNorm), small-batch CNNs with GroupNorm, sequence and tabular models with BatchNorm1d:
`SwitchNorm` holds one copy of any of them per bit-width. A LayerNorm, GroupNorm or RMSNorm normalizes
by the statistics of its own input, so what a per-bit copy learns is its own gain and shift, which
rescale what the next quantized layer sees at that bit-width; a BatchNorm1d copy also keeps its own
running statistics, as the per-bit BNs of a CNN do. With `shared` (`switchbn: false`) one copy serves
every bit-width, as in SwitchBatchNorm2d. A plain norm's state dict loads into every copy.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import ClassVar

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .bitwidth import FULL_PRECISION, BitPair, BitSwitchable, nearest_bits

#: the float norms quantize_model makes one per bit-width (BatchNorm2d has SwitchBatchNorm2d)
SWITCHABLE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d)


def spread_into_copies(state_dict: dict[str, Tensor], prefix: str, keys: Iterable[str], copies: str,
                       count: int) -> None:
    """Move a plain norm's keys (prefix.weight, ...) to each of `count` per-bit copies (prefix.copies.i.weight),
    in place; keys the state dict already holds per copy are kept."""
    flat = {k: state_dict.pop(prefix + k) for k in keys if prefix + k in state_dict}
    for index in range(count):
        for name, value in flat.items():
            state_dict.setdefault(f"{prefix}{copies}.{index}.{name}", value)


class SwitchableNorm(BitSwitchable, nn.Module):
    """The base of the switchable norms (SwitchBatchNorm2d, SwitchNorm): per-bit copies of one norm, the active
    one chosen by the current bit-width (or one copy for all when `shared`), and a plain norm's state dict
    spread into every copy. Readers (calibration, export, the report, checkpoint fitting) use this interface."""

    #: the ModuleList of per-bit copies, as state-dict keys name it (`prefix.<copies_name>.0.weight`)
    copies_name: ClassVar[str]
    shared: bool

    @property
    def copies(self) -> nn.ModuleList:
        """The per-bit copies (one when shared)."""
        return getattr(self, self.copies_name)

    @property
    def active(self) -> nn.Module:
        """The norm this module runs at the current bit-width."""
        return self.copies[0 if self.shared else self.bits_index]

    @property
    def estimated_statistics(self) -> _BatchNorm | None:
        """The active copy when it keeps running statistics of its own bit-width: what BN calibration
        estimates (a shared copy is left alone: it serves the other bit-widths too)."""
        active = self.active
        if isinstance(active, _BatchNorm) and active.track_running_stats and not self.shared:
            return active
        return None

    def forward(self, x: Tensor) -> Tensor:
        return self.active(x)

    def adapt_state_dict(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Spread a plain norm's keys (prefix.weight, prefix.bias, ...) into every per-bit copy, in place."""
        spread_into_copies(state_dict, prefix, self.copies[0].state_dict().keys(), self.copies_name,
                           len(self.copies))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override,no-untyped-def]
        """Accept a plain norm's state (`adapt_state_dict`)."""
        self.adapt_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class SwitchNorm(SwitchableNorm):
    """One copy of `norm` (a LayerNorm, GroupNorm, RMSNorm or BatchNorm1d) per bit-width, chosen by the
    current bit-width, or one for all with `shared`. The copies start as `norm` (its parameters and statistics)."""

    #: the ModuleList of per-bit copies, as state-dict keys name it (`prefix.norms.0.weight`)
    copies_name: ClassVar[str] = "norms"

    def __init__(self, norm: nn.Module, *, bits_list: Iterable[object] = (FULL_PRECISION,), shared: bool = False) -> None:
        if not isinstance(norm, SWITCHABLE_NORMS):
            raise TypeError(f"SwitchNorm takes one of {', '.join(t.__name__ for t in SWITCHABLE_NORMS)}; "
                            f"got {type(norm).__name__} (BatchNorm2d has SwitchBatchNorm2d)")
        nn.Module.__init__(self)
        self._init_bits(bits_list)
        self.shared = shared
        self.norms = nn.ModuleList(copy.deepcopy(norm) for _ in range(1 if shared else len(self.bits_list)))

    def add_bits(self, bits: BitPair) -> None:
        """Add bit-width `bits` with a copy of the nearest trained bit-width's norm; running statistics (a
        BatchNorm1d's) start fresh, to be estimated on data (`calibrate_bn`). A shared norm serves it as it is."""
        if self.shared:
            super().add_bits(bits)
            return
        new = copy.deepcopy(self.norms[nearest_bits(self.bits_list, bits)])
        if isinstance(new, _BatchNorm) and new.track_running_stats:
            new.reset_running_stats()
        self.norms.append(new)
        super().add_bits(bits)

    def extra_repr(self) -> str:
        bits = [b[0] if b[0] == b[1] else b for b in self.bits_list]
        return f"{self.norms[0]!r}, bits_list={bits}" + (", shared" if self.shared else "")


def has_state(norm: nn.Module) -> bool:
    """True when a norm holds anything a per-bit copy could differ in (a gain, a shift, running statistics)."""
    return bool(norm.state_dict())
