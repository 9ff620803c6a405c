"""The `data_transforms` names of the original code, as data: statistics plus one crop rule each.

In the original (AdaBits `train.py data_transforms`), `cifar` and `cinic` are RandomCrop(32,
padding=4) + flip and nothing at evaluation; the three `imagenet1k_*` names are all
RandomResizedCrop(224) (scale 0.08-1) + flip, and Resize(256) + CenterCrop(224) at evaluation. The
colour jitter and PCA lighting of the slimmable_networks lineage are commented out there, so the three
ImageNet names differ only in their mean/std, which matter only with `normalize: true`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .base import DataError, ImageSplits

CropRule = Literal["pad_crop", "resized_crop"]

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CINIC_MEAN, CINIC_STD = (0.4789, 0.4723, 0.4305), (0.2421, 0.2383, 0.2587)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TransformRecipe:
    """What one `data_transforms` name does.

    pad_crop: train = zero-pad by `padding`, random `size` crop, flip; eval = center crop `size`.
    resized_crop: train = RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3)), flip;
    eval = resize the short side to size / eval_crop_fraction (256 for 224), center crop `size`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: CropRule
    size: int
    padding: int = 0
    min_scale: float = 0.08
    eval_crop_fraction: float = 0.875


TRANSFORMS: dict[str, TransformRecipe] = {
    "cifar": TransformRecipe(CIFAR_MEAN, CIFAR_STD, "pad_crop", 32, padding=4),
    "cinic": TransformRecipe(CINIC_MEAN, CINIC_STD, "pad_crop", 32, padding=4),
    "imagenet1k_basic": TransformRecipe(IMAGENET_MEAN, IMAGENET_STD, "resized_crop", 224),
    "imagenet1k_mobile": TransformRecipe(IMAGENET_MEAN, IMAGENET_STD, "resized_crop", 224),
    "imagenet1k_inception": TransformRecipe((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "resized_crop", 224),
}

#: the original's `data_loader` names; all three were one code path there (a torch DataLoader over the
#: dataset), and here each dataset has one loader, so they are accepted and change nothing
DATA_LOADERS = ("imagenet1k_basic", "cifar", "cinic")


def names_with(crop: CropRule) -> list[str]:
    return [name for name, recipe in TRANSFORMS.items() if recipe.crop == crop]


def recipe_named(name: str) -> TransformRecipe:
    recipe = TRANSFORMS.get(name)
    if recipe is None:
        raise DataError(f"unknown data_transforms {name!r}; known: {', '.join(TRANSFORMS)}")
    return recipe


def apply_to_memory_dataset(splits: ImageSplits, name: str | None, dataset: str) -> ImageSplits:
    """An in-memory dataset under a named recipe: its mean/std, and its padding + flip done per batch."""
    if name is None:
        return splits
    recipe = recipe_named(name)
    if recipe.crop != "pad_crop":
        raise DataError(f"data_transforms {name} (random resized crops of large images) needs a folder dataset such "
                        f"as imagenet1k; {dataset} is held in memory and takes: {', '.join(names_with('pad_crop'))}")
    if (len(recipe.mean), recipe.size) != (splits.in_chans, splits.image_size):
        raise DataError(f"data_transforms {name} is for {len(recipe.mean)}-channel {recipe.size}x{recipe.size} images; "
                        f"{dataset} has {splits.in_chans}-channel {splits.image_size}x{splits.image_size} images")
    return replace(splits, mean=recipe.mean, std=recipe.std, crop_padding=recipe.padding, random_flip=True)
