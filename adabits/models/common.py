"""Building blocks shared by the model families: a layer factory and the initialisation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from torch import Tensor, nn

from ..quant.bitwidth import parse_bits_list
from ..quant.config import QuantConfig
from ..quant.layers import QConv2d, QLinear, SwitchBatchNorm2d
from ..quant.residual import Int8Observer

# The seed's classifier init N(0, 0.01) gives the tanh-normalised, SAT-rescaled classifier an
# effective learning rate about 1000x too large (docs/models.md): its forward does not depend on
# the scale of W, so the step size relative to W is what matters. 1.0 trains as well as a float net.
DEFAULT_CLASSIFIER_STD = 1.0
#: the bits the first conv and the classifier of the ImageNet models keep at least (docs/models.md)
IMAGENET_EDGE_BITS = 8


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

    def int8(self) -> nn.Module:
        """Where an integer runtime stores a tensor on 8 bits (the residual stream): an Int8Observer
        under `quantize_residual`, else an nn.Identity (no state)."""
        return Int8Observer(self.bits_list) if self.config.quantize_residual else nn.Identity()

    def bn(self, channels: int) -> SwitchBatchNorm2d:
        return SwitchBatchNorm2d(
            channels, bits_list=self.bits_list, switchbn=self.config.switchbn,
            stats_sharing=self.config.stats_sharing,
        )


class ResidualQuant(nn.Module):
    """The 8-bit observers of one residual block (`LayerFactory.int8`): the sum, the branch output and
    the shortcut. A projection shortcut's output gets its own; an identity shortcut is the block input,
    which is 8-bit already where the block before ends on an observer, else (`quantize_input`) gets one."""

    def __init__(self, layers: LayerFactory, projection: bool, quantize_input: bool = False) -> None:
        super().__init__()
        self.input = layers.int8() if quantize_input else nn.Identity()
        self.branch = layers.int8()
        self.shortcut = layers.int8() if projection else nn.Identity()
        self.output = layers.int8()


def stem_conv(layers: LayerFactory, cin: int, cout: int, kernel: int, stride: int, keep_bits: int) -> QConv2d:
    """The first conv (docs/models.md): weights at `keep_bits` or more, inputs (the images) never clipped."""
    return layers.conv(cin, cout, kernel, stride, weight_only=True, bitw_min=keep_bits, bita_min=8,
                       pact_fp=False, double_side=False)


def classifier_head(layers: LayerFactory, cin: int, num_classes: int, keep_bits: int, dropout: float) -> nn.Sequential:
    """Dropout + linear with weights at `keep_bits` or more; named `classifier.1` as torchvision's."""
    return nn.Sequential(nn.Dropout(dropout), layers.linear(cin, num_classes, bitw_min=keep_bits, double_side=False))


def init_weights(model: nn.Module, classifier_std: float) -> None:
    """As docs/models.md says: conv N(0, sqrt(2 / (kh kw C_out))), BN 1/0, linear N(0, classifier_std), bias 0."""
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


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor`, never below 90% of it (torchvision's rule,
    so that width_mult gives the same widths as torchvision's MobileNet V2)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def as_float_input(x: Tensor, like: Tensor) -> Tensor:
    """Accept uint8 images (values 0..255, `normalize: false`) as well as float tensors."""
    return x if x.is_floating_point() else x.to(like.dtype)


def check_width_mult(width_mult: float) -> None:
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")


class FeaturesPoolClassifier(nn.Module):
    """`features` (its first module a conv-BN-act Sequential), global average pool, `classifier`:
    the layout of torchvision's MobileNets, shared by ours."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward(self, x: Tensor) -> Tensor:
        stem = cast(nn.Sequential, self.features[0])
        x = self.features(as_float_input(x, cast(Tensor, stem[0].weight)))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))
