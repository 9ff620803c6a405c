"""MobileNet V2 (Sandler et al. 2018) with switchable quantized layers, as AdaBits trained it.

Module names follow torchvision's MobileNetV2 (features.N..., classifier.1), so its float weights
load without renaming. Differences from torchvision, all from AdaBits (docs/models.md): ReLU instead of
ReLU6 (`activation: relu6` restores torchvision's), no dropout by default, the first conv is
weight-only at 8 bits or more, the classifier keeps 8 weight bits, and `double_side` clipping
applies only to the layers the original code names.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..quant.config import QuantConfig
from .common import (
    DEFAULT_CLASSIFIER_STD,
    IMAGENET_EDGE_BITS,
    FeaturesPoolClassifier,
    LayerFactory,
    ResidualQuant,
    check_width_mult,
    classifier_head,
    init_weights,
    make_divisible,
    stem_conv,
)
from .registry import register_model

#: expansion t, output channels c, repeats n, first stride s (Sandler et al. 2018)
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def activation_layer(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name](inplace=True)


def conv_bn_act(layers: LayerFactory, cin: int, cout: int, kernel: int, stride: int, activation: str,
                groups: int = 1, **options: object) -> nn.Sequential:
    """conv-BN-activation, indexed 0/1/2 like torchvision's Conv2dNormActivation."""
    return nn.Sequential(layers.conv(cin, cout, kernel, stride, groups=groups, **options),
                         layers.bn(cout), activation_layer(activation))


class InvertedResidual(nn.Module):
    """1x1 expand (if t > 1), 3x3 depthwise, 1x1 linear projection; residual when stride 1 and cin == cout.

    With `double_side`, the first conv of the block clips to [-alpha, alpha] (as the original code): the
    expand conv, whose input (the previous block's linear projection) can be negative, or for t == 1
    the depthwise conv. The other convs take ReLU outputs and keep one-sided clipping.
    """

    def __init__(self, layers: LayerFactory, cin: int, cout: int, stride: int, expand_ratio: int,
                 activation: str) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        signed_input = layers.config.double_side
        self.use_res_connect = stride == 1 and cin == cout
        blocks: list[nn.Module] = []
        if expand_ratio != 1:
            blocks.append(conv_bn_act(layers, cin, hidden, 1, 1, activation, double_side=signed_input))
        blocks += [
            conv_bn_act(layers, hidden, hidden, 3, stride, activation, groups=hidden,
                        double_side=signed_input and expand_ratio == 1),
            layers.conv(hidden, cout, 1, double_side=False),
            layers.bn(cout),
        ]
        self.conv = nn.Sequential(*blocks)
        # the block input comes from a linear projection: float unless the block before was a residual one
        self.quant = ResidualQuant(layers, projection=False, quantize_input=True) if self.use_res_connect else None

    def forward(self, x: Tensor) -> Tensor:
        if self.quant is None:
            return self.conv(x)
        x = self.quant.input(x)
        return self.quant.output(self.quant.branch(self.conv(x)) + x)


class MobileNetV2(FeaturesPoolClassifier):
    """features.0 stem, features.1-17 inverted residuals, features.18 1x1 conv to 1280, pool, classifier.

    3.50 M float parameters at width 1.0 and 1000 classes. Registered as `mobilenet_v2`.
    """

    def __init__(
        self,
        bits_list: list,
        config: QuantConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        activation: str = "relu",
        dropout: float = 0.0,
        classifier_std: float = DEFAULT_CLASSIFIER_STD,
    ) -> None:
        super().__init__()
        check_width_mult(width_mult)
        layers = LayerFactory.of(bits_list, config)
        cin = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        stem = nn.Sequential(stem_conv(layers, in_chans, cin, 3, 2, IMAGENET_EDGE_BITS), layers.bn(cin), activation_layer(activation))
        features: list[nn.Module] = [stem]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * width_mult)
            for index in range(n):
                features.append(InvertedResidual(layers, cin, cout, s if index == 0 else 1, t, activation))
                cin = cout
        features.append(conv_bn_act(layers, cin, self.last_channel, 1, 1, activation,
                                    double_side=layers.config.double_side))
        self.features = nn.Sequential(*features)
        self.classifier = classifier_head(layers, self.last_channel, num_classes, IMAGENET_EDGE_BITS, dropout)
        init_weights(self, classifier_std)


register_model(MobileNetV2, "mobilenet_v2")
