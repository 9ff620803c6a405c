"""CINIC-10 (CIFAR-10 classes, 270,000 32x32 PNGs from CIFAR-10 and ImageNet) as distributed.

CINIC-10.tar.gz unpacks to train/, valid/ and test/, each with one folder per class. As the original,
training uses train/ and validation valid/; test/ is not read.
"""
from __future__ import annotations

from typing import Any

from .base import register_dataset
from .folder import FolderLayout, FolderSplits, load_folders

LAYOUT = FolderLayout("CINIC-10", "train", "valid", "png", "cinic", subfolders=("CINIC-10", "cinic10", "cinic-10"))


@register_dataset("cinic10", "CINIC10", "cinic")
def build_cinic10(opts: Any) -> FolderSplits:
    _, classes, train, val = load_folders(opts, LAYOUT)
    return FolderSplits(train, val, tuple(classes), LAYOUT.default_transforms)
