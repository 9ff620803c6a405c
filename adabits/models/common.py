"""Building blocks shared by the model families: a layer factory and the initialisation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..quant.bitwidth import parse_bits_list
from ..quant.config import QuantConfig
from ..quant.layers import QConv2d, QLinear, SwitchBatchNorm2d


@dataclass(frozen=True)
class LayerFactory:
    """Makes quantized layers that all share one bits_list and one QuantConfig."""

    bits_list: tuple = field(default=(32,))
    config: QuantConfig = field(default_factory=QuantConfig)

    @classmethod
    def of(cls, bits_list: Iterable[object], config: QuantConfig | None) -> "LayerFactory":
        return cls(parse_bits_list(bits_list), config or QuantConfig())

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, **options: Any) -> QConv2d:
        return QConv2d(
            cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False,
            bits_list=self.bits_list, config=self.config, **options,
        )

    def linear(self, cin: int, cout: int, **options: Any) -> QLinear:
        return QLinear(cin, cout, bits_list=self.bits_list, config=self.config, **options)

    def bn(self, channels: int) -> SwitchBatchNorm2d:
        return SwitchBatchNorm2d(
            channels, bits_list=self.bits_list, switchbn=self.config.switchbn,
            stats_sharing=self.config.stats_sharing,
        )


def init_weights(model: nn.Module, classifier_std: float) -> None:
    """SPEC section 6: conv N(0, sqrt(2 / (kh kw C_out))), BN 1/0, linear N(0, classifier_std), bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, classifier_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def as_float_input(x: Tensor, like: Tensor) -> Tensor:
    """Accept uint8 images (values 0..255, SPEC section 5) as well as float tensors."""
    return x if x.is_floating_point() else x.to(like.dtype)
