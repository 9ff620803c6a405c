"""Quantized drop-in layers and the switchable BatchNorm, and the contract every reader relies on.

QConv2d and QLinear subclass nn.Conv2d / nn.Linear: they keep the float API and a float
state dict loads into them. Each holds its float weight and, when it quantizes activations,
a PACT clipping level per bit-width (or one shared). The current bit-width is set from outside
with `adabits.set_bits`, never inside forward.

`QuantLayer` (their base) answers for its own state: the bits it runs at, its clipping level and
input step, its weight codes, signed codes and SAT scale, and how it grows a new bit-width. The
exporters, calibration and profiling read these methods; none of them re-derives a formula, so
"the export computes what the model computes" rests on this one class (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QuantOptionError
from .bitwidth import FULL_PRECISION, BitPair, BitSwitchable, nearest_bits
from .config import QuantConfig
from .functional import (
    channel_codes,
    channel_max,
    channel_weight,
    codes_to_weight,
    compiled_sat_weight,
    quantize_activation,
    quantize_weight,
    sat_scale,
    sat_weight,
    weight_codes,
)
from .interpolation import interpolate_alpha
from .norms import SwitchableNorm
from .schemes import QuantScheme, get_scheme

PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
ALPHA_INIT_CONV = 8.0
ALPHA_INIT_LINEAR = 10.0
#: `double_side: auto`: the side is chosen from the first input (QuantLayer.choose_side)
AUTO_SIDE: Literal["auto"] = "auto"
ClippingSide = bool | Literal["auto"]
#: an input is signed when its most negative value reaches this share of its largest
SIGNED_SHARE = 0.1


class StoredWeight(Protocol):
    """Where a layer's quantized weight comes from instead of its float weight (e.g. a packed file)."""

    def codes(self, bits: int) -> Tensor:
        """The weight's integer codes at `bits` (int64)."""
        ...

    def sat_scale(self, bits: int) -> Tensor:
        """The SAT scale the layer multiplies its weight by at `bits` (0-d)."""
        ...

    def channel_scale(self) -> Tensor:
        """The per-channel weight quantizer's scale, one per output channel (`weight_quantizer: channel`)."""
        ...


class QuantLayer(BitSwitchable, nn.Module):
    """Weight and input quantization shared by QConv2d and QLinear, and the methods readers use."""

    weight: Tensor
    alpha: nn.Parameter | None
    clip_side: Tensor  # with `double_side: auto` only
    weight_clip: Tensor  # with `weight_quantizer: channel` only: per output channel, the share of max|W| kept
    #: train with the compiled quantizers (kernels.py); evaluation and export always use the eager ones
    compiled_quantizers: bool = False

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
        double_side: ClippingSide | None,
    ) -> None:
        self.weight_quant_scheme = config.weight_quant_scheme
        self.weight_quantizer = config.weight_quantizer
        if self.per_channel:  # 1: the scale is max|W| of the channel; calibration may clip (`calibration.py`)
            self.register_buffer("weight_clip", torch.ones(self.weight.shape[0], device=self.weight.device))
        self.act_quant_scheme = config.act_quant_scheme
        self.clamp = config.clamp
        self.rescale = rescale
        self.rescale_type = config.rescale_type
        self.fan_out = fan_out
        self.bitw_min = bitw_min
        self.bita_min = bita_min
        self.weight_only = config.weight_only if weight_only is None else weight_only
        self.pact_fp = config.pact_fp if pact_fp is None else pact_fp
        side = config.double_side if double_side is None else double_side
        if side not in (True, False, AUTO_SIDE):
            raise QuantOptionError(f"double_side must be true, false or {AUTO_SIDE!r}, got {side!r}")
        self.auto_side = side == AUTO_SIDE
        self.double_side = not self.auto_side and bool(side)
        self._side_known = not self.auto_side  # a Python flag: forward reads no tensor to know it
        self.stored_weight: StoredWeight | None = None
        #: per bit-width, how far the output moved from the float layer's on calibration data (calibration.py)
        self.output_drift: dict[object, float] = {}
        self._init_bits(bits_list)
        if self.pact_fp or not self.weight_only:
            count = len(self.bits_list) if config.switch_alpha else 1
            self.alpha = nn.Parameter(
                torch.full((count,), alpha_init, device=self.weight.device, dtype=torch.float32)
            )
        else:
            self.register_parameter("alpha", None)
            self.auto_side, self._side_known = False, True  # nothing to clip
        if self.auto_side:  # 0: not chosen yet, 1: one-sided, 2: two-sided; saved with the model
            self.register_buffer("clip_side", torch.zeros((), dtype=torch.uint8, device=self.weight.device))
        self.switch_bits(self.bits)

    # ---------------------------------------------------------------- bit-widths
    def runs_at(self, bits: BitPair) -> BitPair:
        """(weight bits, activation bits) this layer computes with when the model runs at `bits`:
        its own minimums (the first/last-layer policy) and weight_only applied."""
        weight_bits = min(max(bits[0], self.bitw_min), FULL_PRECISION)
        act_bits = FULL_PRECISION if self.weight_only else min(max(bits[1], self.bita_min), FULL_PRECISION)
        return weight_bits, act_bits

    def switch_bits(self, bits: BitPair) -> None:
        super().switch_bits(bits)
        self.weight_bits, self.act_bits = self.runs_at(bits)

    def add_bits(self, bits: BitPair) -> None:
        """Add bit-width `bits`; a per-bit clipping level is interpolated from the trained ones."""
        if self.alpha is not None and not self.alpha_shared:
            new = interpolate_alpha(self.alpha, self.bits_list, bits).reshape(1)
            self.alpha = nn.Parameter(torch.cat([self.alpha.detach(), new.to(self.alpha)]),
                                      requires_grad=self.alpha.requires_grad)
        super().add_bits(bits)

    # ---------------------------------------------------------------- schemes
    @property
    def weight_scheme(self) -> QuantScheme:
        return get_scheme(self.weight_quant_scheme)

    @property
    def act_scheme(self) -> QuantScheme:
        return get_scheme(self.act_quant_scheme)

    # ---------------------------------------------------------------- the input
    @property
    def alpha_shared(self) -> bool:
        """True when one clipping level serves every bit-width (`switch_alpha=False`)."""
        return self.alpha is not None and self.alpha.numel() == 1

    def current_alpha(self) -> Tensor | None:
        """The clipping level of the current bit-width (a 0-d view of `alpha`, with its gradient), or None."""
        if self.alpha is None:
            return None
        return self.alpha[0 if self.alpha_shared else self.bits_index]

    @torch.no_grad()
    def set_current_alpha(self, value: Tensor | float) -> None:
        """Set the clipping level of the current bit-width (the shared one when there is one)."""
        if self.alpha is None:
            raise ValueError("this layer has no clipping level (weight_only without pact_fp)")
        self.alpha[0 if self.alpha_shared else self.bits_index] = value

    @property
    def clips_input(self) -> bool:
        """True when forward clips (and maybe quantizes) its input at the current bit-width."""
        return self.alpha is not None and (self.act_bits < FULL_PRECISION or self.pact_fp)

    @property
    def quantizes_input(self) -> bool:
        """True when forward turns its input into integer codes at the current bit-width."""
        return self.alpha is not None and self.act_bits < FULL_PRECISION

    def input_scale(self) -> float:
        """The value of one input code step at the current bit-width: input = code * scale (- |alpha|
        for double_side). Only for a layer that `quantizes_input`."""
        alpha = self.current_alpha()
        if alpha is None or not self.quantizes_input:
            raise ValueError("input_scale: this layer does not quantize its input at the current bit-width")
        width = 2.0 if self.double_side else 1.0
        return width * float(alpha.detach().abs()) / self.act_scheme.levels(self.act_bits)

    def input_max_code(self) -> int:
        """The largest input code at the current bit-width (codes run over 0..input_max_code)."""
        return self.act_scheme.max_code(self.act_bits)

    @property
    def clipping_side(self) -> str:
        """How the input is clipped, in words (the conversion report's column)."""
        if self.alpha is None:
            return "none (weights only)"
        if not self._side_known:
            return "auto (no input seen yet)"
        return ("two-sided" if self.double_side else "one-sided") + (" (auto)" if self.auto_side else "")

    def choose_side(self, x: Tensor) -> None:
        """With `double_side: auto`, fix the clipping side from the first input seen: two-sided when its
        most negative value reaches a tenth of its largest (after LayerNorm, attention, a residual sum),
        one-sided otherwise (after ReLU; GELU's small negatives are clipped). Reads the device once."""
        if self._side_known:
            return
        x = x.detach()
        self.set_side(bool((-x.min() > SIGNED_SHARE * x.max()).item()))

    def set_side(self, two_sided: bool) -> None:
        """Fix a `double_side: auto` layer's clipping side (saved with the model as `clip_side`)."""
        if not self.auto_side:
            raise ValueError("set_side: this layer's clipping side is configured, not chosen")
        self.double_side, self._side_known = two_sided, True
        self.clip_side.fill_(2 if two_sided else 1)

    def quantized_input(self, x: Tensor) -> Tensor:
        if not self._side_known:  # `double_side: auto` before its first input; a Python flag, no tensor read
            self.choose_side(x)
        alpha = self.current_alpha()
        if alpha is None or not self.clips_input:
            return x
        return quantize_activation(x, alpha, self.act_bits, self.act_quant_scheme, self.double_side,
                                   compiled=self.compiled_quantizers and self.training)

    # ---------------------------------------------------------------- the weight
    @property
    def per_channel(self) -> bool:
        """True when the weight is quantized on its own scale, one per output channel (`weight_quantizer: channel`)."""
        return self.weight_quantizer == "channel"

    def weight_channel_scale(self) -> Tensor:
        """The per-channel weight quantizer's scale s (one per output channel, float32): the weight at b bits
        is s * (2 q - 1). Only for a `per_channel` layer."""
        if not self.per_channel:
            raise ValueError("weight_channel_scale: this layer quantizes its weight with DoReFa's normalisation")
        if self.stored_weight is not None:
            return self.stored_weight.channel_scale()
        return (self.weight_clip * channel_max(self.weight)).float()

    def weight_codes(self, bits: int | None = None) -> Tensor:
        """The weight's integer codes (int64) at `bits` (default: the current weight bits)."""
        bits = self.weight_bits if bits is None else bits
        if self.stored_weight is not None:
            return self.stored_weight.codes(bits)
        if self.per_channel:
            return channel_codes(self.weight, bits, self.weight_scheme, self.weight_channel_scale())
        return weight_codes(self.weight, bits, self.weight_scheme)

    def signed_weight_codes(self, bits: int | None = None) -> tuple[Tensor, float]:
        """(m, step): the quantized weight before SAT is m * step, m signed integers (int64)."""
        bits = self.weight_bits if bits is None else bits
        return self.weight_scheme.signed(self.weight_codes(bits), bits)

    def weight_sat_scale(self, bits: int | None = None) -> Tensor:
        """The SAT scale (0-d, float32) the quantized weight is multiplied by at `bits`; 1 without rescale."""
        bits = self.weight_bits if bits is None else bits
        if not self.rescale:
            return torch.ones((), device=self.weight.device)
        if self.stored_weight is not None:
            return self.stored_weight.sat_scale(bits)
        quantized = quantize_weight(self.weight.detach(), bits, self.weight_scheme, self.clamp)
        return self._sat_of(quantized).reshape(()).float()

    def weight_scale(self, bits: int | None = None) -> Tensor:
        """Per output channel (float32), what the signed codes' step is multiplied by to give the weight forward
        multiplies with: the SAT scale (DoReFa weights) or the channel scale (`per_channel`). Exporters read this."""
        if self.per_channel:
            return self.weight_channel_scale()
        channels = self.out_channels if isinstance(self, nn.Conv2d) else cast(nn.Linear, self).out_features
        return self.weight_sat_scale(bits).expand(channels).clone()

    def _sat_of(self, quantized: Tensor) -> Tensor:
        return sat_scale(quantized, self.weight, self.fan_out, self.rescale_type)

    def use_stored_weight(self, source: StoredWeight, *, keep_float_weight: bool = True) -> None:
        """Take the quantized weight from `source` (stored codes and SAT scales) instead of the float
        weight, which only full precision still reads; without `keep_float_weight` it is dropped
        (a layer that never runs at 32 bits). Used by `adabits.export.load_packed`."""
        self.stored_weight = source
        if not keep_float_weight:
            self.weight = nn.Parameter(torch.empty(0, device=self.weight.device), requires_grad=False)

    def quantized_weight(self) -> Tensor:
        """The weight forward multiplies with: DoReFa codes at the current weight bits, SAT-rescaled."""
        bits = self.weight_bits
        if self.stored_weight is not None and bits < FULL_PRECISION:
            weight = codes_to_weight(self.weight_codes(), bits, self.weight_scheme)
            if self.per_channel:
                return weight * self.weight_channel_scale().reshape(-1, *([1] * (weight.dim() - 1)))
            return weight * self.weight_sat_scale() if self.rescale else weight
        if self.per_channel:
            return channel_weight(self.weight, bits, self.weight_scheme, self.weight_channel_scale())
        if self.compiled_quantizers and self.training:
            # a view, not the Parameter: torch.compile gives parameters static shapes, one graph per layer
            weight = self.weight.view(self.weight.shape)
            return compiled_sat_weight(weight, bits, self.weight_scheme, self.clamp, self.rescale, self.fan_out,
                                       self.rescale_type)
        return sat_weight(self.weight, bits, self.weight_scheme, self.clamp, self.rescale, self.fan_out,
                          self.rescale_type)

    def adapt_state_dict(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Make a float or shared clipping level fit this layer, in place: one alpha of any shape (the
        original's 0-d or 1-element one) fills every per-bit alpha; a checkpoint with this layer's
        weight but no alpha (a float model's) keeps the alpha's current value, and likewise the side
        and the per-channel weight clipping."""
        if self.per_channel and prefix + "weight" in state_dict:  # a float model's: no clipping chosen yet
            state_dict.setdefault(prefix + "weight_clip", self.weight_clip.clone())
        key = prefix + "alpha"
        if self.alpha is None:
            return
        if key in state_dict:
            source = state_dict[key]
            if source.numel() == 1 and source.shape != self.alpha.shape:
                state_dict[key] = source.reshape(1).expand(self.alpha.shape).clone()
        elif prefix + "weight" in state_dict:
            state_dict[key] = self.alpha.detach().clone()
        if self.auto_side and prefix + "weight" in state_dict:  # a float model's: the side is not chosen yet
            state_dict.setdefault(prefix + "clip_side", self.clip_side.clone())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override,no-untyped-def]
        """Accept float state dicts (`adapt_state_dict`); take a saved clipping side."""
        self.adapt_state_dict(state_dict, prefix)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.auto_side:
            side = int(self.clip_side)
            self.double_side, self._side_known = side == 2, side != 0

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]  # type: ignore[misc]
        parts.append(f"bits_list={[b[0] if b[0] == b[1] else b for b in self.bits_list]}")
        if self.bitw_min > 1 or self.bita_min > 1:
            parts.append(f"bitw_min={self.bitw_min}, bita_min={self.bita_min}")
        for flag in ("weight_only", "pact_fp", "double_side", "rescale", "per_channel"):
            if getattr(self, flag):
                parts.append(f"{flag}=True")
        return ", ".join(parts)


class QConv2d(QuantLayer, nn.Conv2d):
    """nn.Conv2d with DoReFa weights, PACT inputs and optional SAT rescale (fan-out = C_out*kh*kw)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
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
        double_side: ClippingSide | None = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,  # type: ignore[arg-type]
            cast(PaddingMode, padding_mode), device, dtype,  # nn.Conv2d validates both
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


class QLinear(QuantLayer, nn.Linear):
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
        double_side: ClippingSide | None = None,
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


def compile_quantizers(model: nn.Module, enabled: bool = True) -> int:
    """Make every quantized layer of `model` train with the compiled quantizers (kernels.py), or again with
    the eager ones; the model itself stays eager. Returns the number of layers."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    for layer in layers:
        layer.compiled_quantizers = enabled
    return len(layers)


class SwitchBatchNorm2d(SwitchableNorm):
    """One BatchNorm2d per bit-width, chosen by the current bit-width (AdaBits' switchable BN).

    With `stats_sharing` the per-bit BNs share one gamma/beta (the same Parameter objects) and keep
    private running statistics. With `switchbn=False` a single BN serves every bit-width.
    A plain BatchNorm2d state dict loads into every per-bit BN.
    """

    #: the ModuleList of per-bit copies, as state-dict keys name it (`prefix.bn.0.weight`)
    copies_name: ClassVar[str] = "bn"

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
    def shared(self) -> bool:  # type: ignore[override]
        """True when one BatchNorm2d serves every bit-width (`switchbn=False`)."""
        return len(self.bn) == 1

    @property
    def active(self) -> nn.BatchNorm2d:
        """The BatchNorm2d this module runs at the current bit-width."""
        return self._bn(0 if self.shared else self.bits_index)

    def _bn(self, index: int) -> nn.BatchNorm2d:
        return cast(nn.BatchNorm2d, self.bn[index])

    def add_bits(self, bits: BitPair) -> None:
        """Add bit-width `bits` with a BatchNorm2d of its own: gamma/beta copied from the nearest
        trained bit-width (shared with `stats_sharing`), fresh running statistics to estimate."""
        if not self.shared:
            source = self._bn(nearest_bits(self.bits_list, bits))
            bn = nn.BatchNorm2d(self.num_features, source.eps, source.momentum,
                                device=source.weight.device, dtype=source.weight.dtype)
            if self.stats_sharing:
                bn.weight, bn.bias = self._bn(0).weight, self._bn(0).bias
            else:
                with torch.no_grad():
                    bn.weight.copy_(source.weight)
                    bn.bias.copy_(source.bias)
            bn.train(self.training)
            self.bn.append(bn)
        super().add_bits(bits)

    def extra_repr(self) -> str:
        bits = [b[0] if b[0] == b[1] else b for b in self.bits_list]
        return f"{self.num_features}, bits_list={bits}, stats_sharing={self.stats_sharing}"
