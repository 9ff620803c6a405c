"""Quantized drop-in layers and the switchable BatchNorm (SPEC sections 2-5).

QConv2d and QLinear subclass nn.Conv2d / nn.Linear: they keep the float API and a float
state dict loads into them. Each holds its float weight and, when it quantizes activations,
a PACT clipping level per bit-width (or one shared). The current bit-width is set from outside
with `adabits.set_bits`, never inside forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bitwidth import FULL_PRECISION, BitPair, BitSwitchable
from .config import QuantConfig
from .functional import quantize_activation, quantize_weight, sat_scale

ALPHA_INIT_CONV = 8.0
ALPHA_INIT_LINEAR = 10.0


class QuantLayerMixin(BitSwitchable):
    """Weight and input quantization shared by QConv2d and QLinear."""

    weight: Tensor
    alpha: nn.Parameter | None

    def _init_quant(
        self,
        bits_list: Iterable[object],
        config: QuantConfig,
        *,
        fan_out: int,
        rescale: bool,
        alpha_init: float,
        bitw_min: int,
        bita_min: int,
        weight_only: bool | None,
        pact_fp: bool | None,
        double_side: bool | None,
    ) -> None:
        self.weight_quant_scheme = config.weight_quant_scheme
        self.act_quant_scheme = config.act_quant_scheme
        self.clamp = config.clamp
        self.rescale = rescale
        self.rescale_type = config.rescale_type
        self.fan_out = fan_out
        self.bitw_min = bitw_min
        self.bita_min = bita_min
        self.weight_only = config.weight_only if weight_only is None else weight_only
        self.pact_fp = config.pact_fp if pact_fp is None else pact_fp
        self.double_side = config.double_side if double_side is None else double_side
        self._init_bits(bits_list)
        if self.pact_fp or not self.weight_only:
            count = len(self.bits_list) if config.switch_alpha else 1
            self.alpha = nn.Parameter(
                torch.full((count,), alpha_init, device=self.weight.device, dtype=torch.float32)
            )
        else:
            self.register_parameter("alpha", None)
        self.switch_bits(self.bits)

    def switch_bits(self, bits: BitPair) -> None:
        super().switch_bits(bits)
        weight_bits, act_bits = bits
        self.weight_bits = min(max(weight_bits, self.bitw_min), FULL_PRECISION)
        self.act_bits = FULL_PRECISION if self.weight_only else min(max(act_bits, self.bita_min), FULL_PRECISION)

    def quantized_input(self, x: Tensor) -> Tensor:
        if self.alpha is None or (self.act_bits >= FULL_PRECISION and not self.pact_fp):
            return x
        alpha = self.alpha[self.bits_index] if self.alpha.numel() > 1 else self.alpha
        return quantize_activation(x, alpha, self.act_bits, self.act_quant_scheme, self.double_side)

    def quantized_weight(self) -> Tensor:
        weight = quantize_weight(self.weight, self.weight_bits, self.weight_quant_scheme, self.clamp)
        if self.rescale:
            weight = weight * sat_scale(weight, self.weight, self.fan_out, self.rescale_type)
        return weight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        """Accept float state dicts: no alpha keeps its init, one alpha fills every per-bit alpha."""
        key = prefix + "alpha"
        if self.alpha is not None and key in state_dict:
            source = state_dict[key]
            if source.numel() == 1 and self.alpha.numel() != 1:
                state_dict[key] = source.reshape(1).expand(self.alpha.shape).clone()
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key in missing_keys and prefix + "weight" in state_dict:
            missing_keys.remove(key)

    def extra_repr(self) -> str:  # type: ignore[override]
        parts = [super().extra_repr()]  # type: ignore[misc]
        parts.append(f"bits_list={[b[0] if b[0] == b[1] else b for b in self.bits_list]}")
        if self.bitw_min > 1 or self.bita_min > 1:
            parts.append(f"bitw_min={self.bitw_min}, bita_min={self.bita_min}")
        for flag in ("weight_only", "pact_fp", "double_side", "rescale"):
            if getattr(self, flag):
                parts.append(f"{flag}=True")
        return ", ".join(parts)


class QConv2d(QuantLayerMixin, nn.Conv2d):
    """nn.Conv2d with DoReFa weights, PACT inputs and optional SAT rescale (fan-out = C_out*kh*kw)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bits_list: Iterable[object] = (FULL_PRECISION,),
        config: QuantConfig | None = None,
        bitw_min: int = 1,
        bita_min: int = 1,
        weight_only: bool | None = None,
        pact_fp: bool | None = None,
        double_side: bool | None = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        config = config or QuantConfig()
        kh, kw = self.kernel_size
        self._init_quant(
            bits_list, config, fan_out=out_channels * kh * kw, rescale=config.rescale_conv,
            alpha_init=ALPHA_INIT_CONV, bitw_min=bitw_min, bita_min=bita_min,
            weight_only=weight_only, pact_fp=pact_fp, double_side=double_side,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QLinear(QuantLayerMixin, nn.Linear):
    """nn.Linear with DoReFa weights, PACT inputs and SAT rescale (fan-out = out_features).

    The SAT scale multiplies the weight in training and evaluation alike, so the two give the
    same logits (the original divided the bias by the scale in evaluation instead).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bits_list: Iterable[object] = (FULL_PRECISION,),
        config: QuantConfig | None = None,
        bitw_min: int = 1,
        bita_min: int = 1,
        weight_only: bool | None = None,
        pact_fp: bool | None = None,
        double_side: bool | None = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        config = config or QuantConfig()
        self._init_quant(
            bits_list, config, fan_out=out_features, rescale=config.rescale,
            alpha_init=ALPHA_INIT_LINEAR, bitw_min=bitw_min, bita_min=bita_min,
            weight_only=weight_only, pact_fp=pact_fp, double_side=double_side,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)


_BN_STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class SwitchBatchNorm2d(BitSwitchable, nn.Module):
    """One BatchNorm2d per bit-width, chosen by the current bit-width (AdaBits' switchable BN).

    With `stats_sharing` the per-bit BNs share one gamma/beta (the same Parameter objects) and keep
    private running statistics. With `switchbn=False` a single BN serves every bit-width.
    A plain BatchNorm2d state dict loads into every per-bit BN.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bits_list: Iterable[object] = (FULL_PRECISION,),
        switchbn: bool = True,
        stats_sharing: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self._init_bits(bits_list)
        self.num_features = num_features
        self.stats_sharing = stats_sharing
        count = len(self.bits_list) if switchbn else 1
        self.bn = nn.ModuleList(
            nn.BatchNorm2d(num_features, eps, momentum, device=device, dtype=dtype) for _ in range(count)
        )
        if stats_sharing:
            for bn in self.bn[1:]:
                bn.weight, bn.bias = self.bn[0].weight, self.bn[0].bias

    @property
    def shared(self) -> bool:
        """True when one BatchNorm2d serves every bit-width (`switchbn=False`)."""
        return len(self.bn) == 1

    @property
    def active(self) -> nn.BatchNorm2d:
        """The BatchNorm2d this module runs at the current bit-width."""
        return self.bn[0 if self.shared else self.bits_index]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.active(x)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        """Spread the keys of a plain BatchNorm2d (prefix.weight, ...) into every per-bit BN."""
        flat = {k: state_dict.pop(prefix + k) for k in _BN_STATE_KEYS if prefix + k in state_dict}
        for index in range(len(self.bn)):
            for name, value in flat.items():
                state_dict.setdefault(f"{prefix}bn.{index}.{name}", value)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        bits = [b[0] if b[0] == b[1] else b for b in self.bits_list]
        return f"{self.num_features}, bits_list={bits}, stats_sharing={self.stats_sharing}"
