"""Float models trained in plain PyTorch (nothing of adabits) on real Fashion-MNIST: the pretrained models users
arrive with, for the tests that check a conversion or a deployment against a model that has learned something."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fashion_mnist(count: int) -> tuple[Tensor, Tensor]:
    """The first `count` training images (normalised, N x 1 x 28 x 28) and labels; skips without the dataset."""
    from adabits.data import DataError, ToModelInput, build_splits
    from adabits.engine import TrainConfig

    try:
        splits = build_splits(TrainConfig(dataset="fashion_mnist"))
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    to_input = ToModelInput(True, splits.mean, splits.std)
    return to_input(splits.train_images[:count]), splits.train_labels[:count]


def _fit(model: nn.Module, images: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer, epochs: int = 1) -> nn.Module:
    for _ in range(epochs):
        for x, y in zip(images.split(64), labels.split(64)):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def trained_cnn(images: Tensor, labels: Tensor, width: int = 8) -> nn.Module:
    """A small CNN (`width` channels, then twice as many), one pass of SGD over `images`."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))
    return _fit(model, images, labels, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))


class _Block(nn.Module):
    """Pre-norm self-attention and a GELU MLP, every projection an `nn.Linear` (as timm's ViT writes them)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, width)
        x = x + self.proj(attended)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """16 patches of 7 x 7 pixels, two blocks of width 64, mean-pooled tokens, a linear head."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, width, 7, 7)
        self.position = nn.Parameter(torch.zeros(1, 16, width))
        self.blocks = nn.Sequential(_Block(width, 4), _Block(width, 4))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, 10)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.blocks(tokens)).mean(1))


def trained_vit(images: Tensor, labels: Tensor) -> nn.Module:
    """TinyViT, two passes of AdamW over `images`."""
    torch.manual_seed(0)
    model = TinyViT()
    return _fit(model, images, labels, torch.optim.AdamW(model.parameters(), lr=2e-3), epochs=2)
