"""CIFAR ResNets of depth 6n+2 (He et al. 2016, section 4.2) with switchable quantized layers."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from ..quant.bitwidth import max_bits
from ..quant.config import QuantConfig
from .common import DEFAULT_CLASSIFIER_STD, LayerFactory, ResidualQuant, as_float_input, init_weights, stem_conv
from .registry import register_model

#: a block's key in a state dict: layers.<index>.
_BLOCK = re.compile(r"layers\.(\d+)\.")


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus identity or 1x1 conv-BN projection, ReLU after the add."""

    def __init__(self, layers: LayerFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = layers.conv(cin, cout, 3, stride)
        self.bn1 = layers.bn(cout)
        self.conv2 = layers.conv(cout, cout, 3)
        self.bn2 = layers.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(layers.conv(cin, cout, 1, stride), layers.bn(cout))
        self.quant = ResidualQuant(layers, projection=stride != 1 or cin != cout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.quant.output(self.relu(self.quant.branch(out) + self.quant.shortcut(self.shortcut(x))))


class CifarResNet(nn.Module):
    """Widths w, 2w, 4w (w = 16); the first conv is weight-only at the highest bits and never clips
    the images (also under `pact_fp`), the classifier keeps the highest weight bits (as the original code)."""

    def __init__(
        self,
        depth: int,
        bits_list: list,
        config: QuantConfig | None = None,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        classifier_std: float = DEFAULT_CLASSIFIER_STD,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        blocks = (depth - 2) // 6
        layers = LayerFactory.of(bits_list, config)
        top = max_bits(bits_list)
        self.conv1 = stem_conv(layers, in_chans, width, 3, 1, top)
        self.bn1 = layers.bn(width)
        self.relu = nn.ReLU(inplace=True)
        self.stem_quant = layers.int8()  # the first block's input, which its shortcut adds as it is
        stages: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                stages.append(BasicBlock(layers, cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = layers.linear(cin, num_classes, bitw_min=top)
        init_weights(self, classifier_std)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_quant(self.relu(self.bn1(self.conv1(as_float_input(x, self.conv1.weight)))))
        x = self.pool(self.layers(x)).flatten(1)
        return self.fc(x)

    def layout_hint(self, state: Mapping[str, Tensor]) -> str | None:
        """The depth a state dict of another CIFAR ResNet was written for (`adabits.load_weights` asks this when
        it does not fit)."""
        blocks = {int(m.group(1)) for m in map(_BLOCK.match, state) if m}
        if blocks and len(blocks) % 3 == 0 and len(blocks) != len(self.layers):
            return f"depth {2 * len(blocks) + 2} (this model has depth {2 * len(self.layers) + 2})"
        return None


@register_model
def resnet_cifar(
    bits_list: list,
    config: QuantConfig | None = None,
    depth: int = 20,
    num_classes: int = 10,
    in_chans: int = 3,
    width: int = 16,
    classifier_std: float = DEFAULT_CLASSIFIER_STD,
) -> CifarResNet:
    """CIFAR ResNet of any depth 6n+2."""
    return CifarResNet(depth, bits_list, config, num_classes, in_chans, width, classifier_std)


def _fixed_depth(depth: int):
    def build(bits_list: list, config: QuantConfig | None = None, num_classes: int = 10, in_chans: int = 3,
              width: int = 16, classifier_std: float = DEFAULT_CLASSIFIER_STD) -> CifarResNet:
        return CifarResNet(depth, bits_list, config, num_classes, in_chans, width, classifier_std)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth}."
    return register_model(build)


resnet20 = _fixed_depth(20)
resnet32 = _fixed_depth(32)
resnet44 = _fixed_depth(44)
resnet56 = _fixed_depth(56)
resnet110 = _fixed_depth(110)
