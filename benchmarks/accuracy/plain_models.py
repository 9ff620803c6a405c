"""Float models written and trained in plain PyTorch, with no adabits anywhere: what a user brings to
`adabits.quantize_model` when they start from a model of their own (issue 26, "Start from any pretrained
model").

Three families a user is likely to hold, each for 1 x 28 x 28 images and 10 classes (Fashion-MNIST):

- `PlainCNN`: six conv-BN-ReLU blocks (two of stride 2), global average pooling, a linear classifier;
- `PlainResNet20`: the CIFAR ResNet-20 of He et al. (2016): a 3x3 stem, three stages of three BasicBlocks
  at 16, 32 and 64 channels, parameter-free "option A" shortcuts (subsample, then zero-pad the channels);
- `PlainViT`: a 4x4-patch convolution, a class token and a learned position embedding (bare parameters,
  as timm writes them), four pre-norm `nn.TransformerEncoderLayer`s, LayerNorm, a linear head.

`train_plain` is the loop such a user would have written: SGD with Nesterov momentum (AdamW for a
transformer) and a per-step cosine learning rate, cross-entropy, nothing else. This module must not import
adabits: the point of the benchmark is that the float model owes nothing to the library it is converted by.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Optimizer = Literal["sgd", "adamw"]


# ---------------------------------------------------------------------------------------------- the CNN


def conv_bn_relu(in_chans: int, out_chans: int, stride: int = 1) -> nn.Sequential:
    """A 3x3 convolution (no bias: BN follows), BatchNorm and ReLU, the block of every VGG-style net."""
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chans),
                         nn.ReLU(inplace=True))


class PlainCNN(nn.Module):
    """Six conv-BN-ReLU blocks (32, 32/2, 64, 64/2, 128, 128 channels; /2 = stride 2), average pool, linear.

    About 18 M multiply-adds for a 28 x 28 image: a cheap net that still reaches about 90 % on Fashion-MNIST
    in two epochs."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths: tuple[int, ...] = (32, 32, 64, 64, 128, 128),
                 strides: tuple[int, ...] = (1, 2, 1, 2, 1, 1)) -> None:
        super().__init__()
        chans = (in_chans, *widths)
        self.features = nn.Sequential(*(conv_bn_relu(chans[i], chans[i + 1], s) for i, s in enumerate(strides)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


# ---------------------------------------------------------------------------------------------- ResNet-20


class ShortcutA(nn.Module):
    """He et al.'s option A for CIFAR: subsample by the stride and pad the new channels with zeros.

    No weights, so the shortcut adds no parameters; a module (not a lambda) so that the model pickles,
    traces with torch.fx and exports."""

    def __init__(self, stride: int, extra_chans: int) -> None:
        super().__init__()
        self.stride, self.extra_chans = stride, extra_chans

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_chans // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_chans - half))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with a ReLU between, the input added before the last ReLU (one ReLU module per use,
    so that graph tools fuse each with its convolution)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.relu2 = nn.ReLU(inplace=True)
        changes = stride != 1 or in_chans != out_chans
        self.shortcut: nn.Module = ShortcutA(stride, out_chans - in_chans) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PlainResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, section 4.2): 3 stages x 3 BasicBlocks at 16/32/64 channels,
    option-A shortcuts, Kaiming-normal initialisation. On 28 x 28 images the stages run at 28, 14 and 7."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, blocks_per_stage: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        blocks, chans = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(chans, width, 2 if stage > 0 and i == 0 else 1))
                chans = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layers(x)).flatten(1))


# ---------------------------------------------------------------------------------------------- the ViT


class PlainViT(nn.Module):
    """A small ViT: patches -> class token + position embedding -> pre-norm encoder -> LayerNorm -> head.

    The class token and position embedding are bare `nn.Parameter`s of the model, as in timm, and the
    encoder is torch's own `nn.TransformerEncoderLayer` (GELU, norm first, batch first)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, patch_size: int = 4,
                 dim: int = 64, depth: int = 4, heads: int = 4, mlp_dim: int = 128) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


# ---------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainStats:
    """What a float training run took: its wall time, steps, and the mean loss of its last epoch."""

    seconds: float
    steps: int
    last_epoch_loss: float


def cosine_factor(step: int, total: int, warmup: int = 0) -> float:
    """The learning-rate factor at `step` of `total`: linear warm-up over `warmup` steps, then a cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, kind: Optimizer, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9 (the CIFAR ResNet recipe) or AdamW; no weight decay on biases and
    norms (their 1-D parameters), as both recipes usually do."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {kind!r}; allowed: sgd, adamw")


def train_plain(model: nn.Module, train_loader: Iterable[tuple[Tensor, Tensor]], epochs: int, lr: float,
                optimizer: Optimizer = "sgd", weight_decay: float = 5e-4, warmup_steps: int = 0,
                label_smoothing: float = 0.0) -> TrainStats:
    """Train `model` in place: cross-entropy, `optimizer`, the learning rate following `cosine_factor`
    step by step over `epochs` passes of `train_loader` (which must have a length). Leaves the model in
    eval mode. A loader with `set_epoch` (adabits.data.TensorLoader, a DistributedSampler's owner) is told
    each epoch, so that its shuffling and augmentation are reproducible."""
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = epochs * steps_per_epoch
    opt = make_optimizer(model, optimizer, lr, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, total, warmup_steps))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    start, step, epoch_loss = time.perf_counter(), 0, float("nan")
    model.train()
    for epoch in range(epochs):
        set_epoch = getattr(train_loader, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        losses = []
        for images, labels in train_loader:
            loss = criterion(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.detach())
            step += 1
        if losses:
            epoch_loss = float(torch.stack(losses).mean())
    model.eval()
    return TrainStats(round(time.perf_counter() - start, 1), step, round(epoch_loss, 4))
