"""MobileNet V1 (Howard et al. 2017) with switchable quantized layers, as AdaBits trained it.

torchvision has no MobileNet V1; the names follow its MobileNet V2 (features.N, classifier.1), each
block being one Sequential: 3x3 depthwise conv-BN-ReLU then 1x1 pointwise conv-BN-ReLU.
"""

from __future__ import annotations

from torch import nn

from ..quant.config import QuantConfig
from .common import (
    DEFAULT_CLASSIFIER_STD,
    IMAGENET_EDGE_BITS,
    FeaturesPoolClassifier,
    LayerFactory,
    check_width_mult,
    classifier_head,
    init_weights,
    make_divisible,
    stem_conv,
)
from .registry import register_model

#: output channels c, repeats n, first stride s of the depthwise-separable blocks (Howard et al. 2017)
BLOCK_SETTING = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))


def depthwise_separable(layers: LayerFactory, cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        layers.conv(cin, cin, 3, stride, groups=cin), layers.bn(cin), nn.ReLU(inplace=True),
        layers.conv(cin, cout, 1), layers.bn(cout), nn.ReLU(inplace=True),
    )


class MobileNetV1(FeaturesPoolClassifier):
    """features.0 stem (3x3 stride 2 to 32 channels), features.1-13 depthwise-separable blocks, pool, classifier.

    4.23 M float parameters at width 1.0 and 1000 classes. Registered as `mobilenet_v1`.
    """

    def __init__(
        self,
        bits_list: list,
        config: QuantConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.0,
        classifier_std: float = DEFAULT_CLASSIFIER_STD,
    ) -> None:
        super().__init__()
        check_width_mult(width_mult)
        layers = LayerFactory.of(bits_list, config)
        cin = make_divisible(32 * width_mult)
        features: list[nn.Module] = [nn.Sequential(
            stem_conv(layers, in_chans, cin, 3, 2, IMAGENET_EDGE_BITS), layers.bn(cin), nn.ReLU(inplace=True))]
        for c, n, s in BLOCK_SETTING:
            cout = make_divisible(c * width_mult)
            for index in range(n):
                features.append(depthwise_separable(layers, cin, cout, s if index == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*features)
        self.classifier = classifier_head(layers, cin, num_classes, IMAGENET_EDGE_BITS, dropout)
        init_weights(self, classifier_std)


register_model(MobileNetV1, "mobilenet_v1")
