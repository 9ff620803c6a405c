"""A small vision transformer written with plain PyTorch blocks, made switchable by `quantize_model`.

The float network is what a user would write (a patch convolution, `nn.TransformerEncoder`, a linear
head); the registered constructor converts it like any other model, so this family is also the test
that `quantize_model` handles transformers: every weight quantized (the attention projections too),
LayerNorm one per bit-width, each layer's clipping side chosen from its first input.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..quant.config import QuantConfig
from ..quant.convert import quantize_model
from .common import as_float_input
from .registry import register_model


class PositionEmbedding(nn.Module):
    """A learned embedding added to each token: added, not multiplied, so it stays float."""

    float_by_design = "an added position embedding: nothing multiplies with it"

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.weight


class VisionTransformer(nn.Module):
    """Patches of `patch_size` pixels -> `depth` pre-norm encoder layers -> mean over tokens -> linear head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, patch_size: int = 4,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.position = PositionEmbedding((image_size // patch_size) ** 2, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.position(self.patch(as_float_input(x, self.patch.weight)).flatten(2).transpose(1, 2))
        return self.head(self.norm(self.encoder(tokens)).mean(dim=1))


@register_model
def vit_tiny(bits_list: Iterable[object] = (32,), config: QuantConfig | None = None, num_classes: int = 10,
             in_chans: int = 1, image_size: int = 28, patch_size: int = 4, dim: int = 64, depth: int = 2,
             heads: int = 4, mlp_dim: int = 128, dropout: float = 0.0) -> nn.Module:
    """VisionTransformer (64 wide, 2 layers, 4 heads on 28x28 images by default), switchable over `bits_list`."""
    model = VisionTransformer(num_classes, in_chans, image_size, patch_size, dim, depth, heads, mlp_dim, dropout)
    return quantize_model(model, bits_list, config)
