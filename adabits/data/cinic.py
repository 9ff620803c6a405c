"""CINIC-10 (CIFAR-10 classes, 270,000 32x32 PNGs from CIFAR-10 and ImageNet) as distributed.

CINIC-10.tar.gz unpacks to train/, valid/ and test/, each with one folder per class. As the original,
training uses train/ and validation valid/; test/ is not read.
"""
from __future__ import annotations

from .base import DataOptions, register_dataset
from .folder import FolderLayout, FolderSplits, folder_shape, load_folders

LAYOUT = FolderLayout("CINIC-10", "train", "valid", "png", "cinic", subfolders=("CINIC-10", "cinic10", "cinic-10"))


@register_dataset("cinic10", "CINIC10", "cinic", shape=folder_shape(10, LAYOUT))
def build_cinic10(opts: DataOptions) -> FolderSplits:
    _, classes, train, val = load_folders(opts, LAYOUT)
    return FolderSplits(train, val, tuple(classes), LAYOUT.default_transforms)
