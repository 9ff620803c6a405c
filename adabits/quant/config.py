"""QuantConfig: every quantization option of a model (schemes, SAT rescale, switchable BN and alpha) in one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

from ..errors import QuantOptionError
from .functional import RESCALE_TYPES, check_scheme
from .schemes import SchemeName

#: "dorefa": tanh(W) / max|tanh(W)| (the seed's, for models trained with SAT's weights); "channel": W / s with
#: one scale s per output channel, which keeps a pretrained float model's function (functional.channel_weight)
WeightQuantizer = Literal["dorefa", "channel"]
WEIGHT_QUANTIZERS: tuple[str, ...] = get_args(WeightQuantizer)
#: SAT's rescale target: "constant" s0 = 1/sqrt(fan_out); "stddev" s0 = std(W)
RescaleType = Literal["constant", "stddev"]


@dataclass(frozen=True)
class QuantConfig:
    """How every quantized layer of a model quantizes (per-layer options may override some).

    Defaults are the original code's, except `switchbn` and `switch_alpha`, which the seed used
    for all of its adaptive models (they are the AdaBits method). These fields, their types and defaults are
    also the quantization keys of a YAML config (engine/config.py generates them from here).
    """

    weight_quant_scheme: SchemeName = "modified"
    weight_quantizer: WeightQuantizer = "dorefa"  # "channel": per-output-channel scales, for pretrained float models
    act_quant_scheme: SchemeName = "original"
    clamp: bool = True  # tanh/max normalisation of full-precision weights too
    rescale: bool = True  # SAT rescale of linear layers
    rescale_conv: bool = False  # SAT rescale of convolutions
    rescale_type: RescaleType = "constant"  # "constant": s0 = 1/sqrt(fan_out); "stddev": s0 = std(W)
    switchbn: bool = True  # one BatchNorm per bit-width
    switch_alpha: bool = True  # one PACT clipping level per bit-width
    stats_sharing: bool = False  # switchable BN shares gamma/beta, keeps private statistics
    pact_fp: bool = False  # clip activations with PACT at full precision too
    double_side: bool = False  # clip activations to [-alpha, alpha]
    weight_only: bool = False  # quantize weights only
    quantize_residual: bool = False  # residual adds fake-quantize inputs and output to 8 bits (QuantAdd)

    def __post_init__(self) -> None:
        check_scheme(self.weight_quant_scheme)
        check_scheme(self.act_quant_scheme)
        if self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise QuantOptionError(f"unknown weight_quantizer {self.weight_quantizer!r}; "
                                   f"allowed: {', '.join(WEIGHT_QUANTIZERS)}")
        if self.weight_quantizer == "channel" and (self.clamp or self.rescale or self.rescale_conv):
            raise QuantOptionError("weight_quantizer 'channel' keeps the float weight's scale: it needs clamp, rescale "
                                   "and rescale_conv false (QuantConfig.pretrained() sets them)")
        if self.rescale_type not in RESCALE_TYPES:
            raise ValueError(f"unknown rescale_type {self.rescale_type!r}; allowed: {', '.join(RESCALE_TYPES)}")
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"QuantConfig.{f.name} must be true or false, got {getattr(self, f.name)!r}")

    @classmethod
    def pretrained(cls, **changes: Any) -> "QuantConfig":
        """The options for a float model trained without adabits (torchvision, timm, your own): weights
        quantized per output channel on their own scale with the unbiased `centered` scheme (nested, so one
        stored weight serves every bit-width), no tanh normalisation and no SAT rescale. With calibration
        (`quantize_model(..., calibration=batches)`) the converted model computes nearly what the float one
        did at every bit-width before any training."""
        base = {"weight_quantizer": "channel", "weight_quant_scheme": "centered", "clamp": False, "rescale": False,
                "rescale_conv": False}
        return cls(**{**base, **changes})

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def split_options(cls, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split keyword options into (QuantConfig fields, the rest)."""
        names = cls.field_names()
        quant = {k: v for k, v in options.items() if k in names}
        rest = {k: v for k, v in options.items() if k not in names}
        return quant, rest

    def updated(self, **changes: Any) -> "QuantConfig":
        return replace(self, **changes)
