"""ImageNet ResNets (He et al. 2016) with switchable quantized layers: resnet18/34 (basic blocks) and
resnet50 (bottlenecks, stride on the 3x3 conv as torchvision's "v1.5").

Module names are torchvision's (conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0/1, fc), so its
float weights load unchanged. First/last layers as the MobileNets (AdaBits paper): the stem conv is
weight-only at 8 bits or more, fc keeps 8 weight bits.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..quant.config import QuantConfig
from .common import (
    DEFAULT_CLASSIFIER_STD,
    IMAGENET_EDGE_BITS,
    LayerFactory,
    ResidualQuant,
    as_float_input,
    init_weights,
    stem_conv,
)
from .registry import register_model


def downsample(layers: LayerFactory, cin: int, cout: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN projection when the shape changes (torchvision's `downsample.0/1`), else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(layers.conv(cin, cout, 1, stride), layers.bn(cout))


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus identity or projection, ReLU after the add."""

    expansion = 1

    def __init__(self, layers: LayerFactory, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = layers.conv(cin, width, 3, stride)
        self.bn1 = layers.bn(width)
        self.conv2 = layers.conv(width, width, 3)
        self.bn2 = layers.bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(layers, cin, width, stride)
        self.quant = ResidualQuant(layers, self.downsample is not None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.quant.output(self.relu(self.quant.branch(out) + self.quant.shortcut(identity)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand x4, each with BN; identity or projection; ReLU."""

    expansion = 4

    def __init__(self, layers: LayerFactory, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = layers.conv(cin, width, 1)
        self.bn1 = layers.bn(width)
        self.conv2 = layers.conv(width, width, 3, stride)
        self.bn2 = layers.bn(width)
        self.conv3 = layers.conv(width, cout, 1)
        self.bn3 = layers.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample(layers, cin, cout, stride)
        self.quant = ResidualQuant(layers, self.downsample is not None)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.quant.output(self.relu(self.quant.branch(out) + self.quant.shortcut(identity)))


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max pool, four stages of widths 64-512 (the first stride 1, then 2), pool, fc."""

    layer1: nn.Sequential  # the stages, set by name in __init__ (torchvision's names)
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: tuple[int, int, int, int],
        bits_list: list,
        config: QuantConfig | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        classifier_std: float = DEFAULT_CLASSIFIER_STD,
    ) -> None:
        super().__init__()
        layers = LayerFactory.of(bits_list, config)
        self.conv1 = stem_conv(layers, in_chans, 64, 7, 2, IMAGENET_EDGE_BITS)
        self.bn1 = layers.bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stem_quant = layers.int8()  # the first block's input, which its shortcut adds as it is
        cin = 64
        for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for index in range(depth):
                blocks.append(block(layers, cin, width, 2 if stage > 0 and index == 0 else 1))
                cin = width * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = layers.linear(cin, num_classes, bitw_min=IMAGENET_EDGE_BITS, double_side=False)
        init_weights(self, classifier_std)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(as_float_input(x, self.conv1.weight))))
        x = self.stem_quant(self.maxpool(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def resnet18(bits_list: list, config: QuantConfig | None = None, num_classes: int = 1000, in_chans: int = 3,
             classifier_std: float = DEFAULT_CLASSIFIER_STD) -> ResNet:
    """ResNet-18 (11.69 M parameters at 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), bits_list, config, num_classes, in_chans, classifier_std)


@register_model
def resnet34(bits_list: list, config: QuantConfig | None = None, num_classes: int = 1000, in_chans: int = 3,
             classifier_std: float = DEFAULT_CLASSIFIER_STD) -> ResNet:
    """ResNet-34 (21.80 M parameters at 1000 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), bits_list, config, num_classes, in_chans, classifier_std)


@register_model
def resnet50(bits_list: list, config: QuantConfig | None = None, num_classes: int = 1000, in_chans: int = 3,
             classifier_std: float = DEFAULT_CLASSIFIER_STD) -> ResNet:
    """ResNet-50 (25.56 M parameters at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), bits_list, config, num_classes, in_chans, classifier_std)
