"""A small ResNet with BN statistics (and 8-bit observer ranges) from a few training-mode forwards, for the
integer-export tests."""
from __future__ import annotations

import torch

import adabits

SHAPE = (1, 12, 12)


def small_resnet(forwards: int = 1, **options) -> tuple[torch.nn.Module, torch.Tensor]:
    """resnet_cifar depth 8, width 8, 5 classes, bits [8, 4], in eval mode, and the 64 images it saw."""
    torch.manual_seed(0)
    model = adabits.create_model("resnet_cifar", bits_list=[8, 4], depth=8, width=8, num_classes=5, in_chans=1,
                                 **options)
    images = torch.randint(0, 256, (64, *SHAPE)).float()
    model.train()
    with torch.no_grad():
        for bits in (8, 4):
            with adabits.use_bits(model, bits):
                for _ in range(forwards):
                    model(images)
    return model.eval(), images
