"""Batches of a folder dataset: decode + augment in torch DataLoader workers, uint8 until the device.

Images leave the workers as uint8 (4x less to pin and copy than float) and become model input on the
device through the same `ToModelInput` as the in-memory datasets. The sampler runs in the main
process and tags every index with the epoch, so each sample's random choices depend only on
(seed, epoch, index): 0 or N workers, persistent or not, give the same batches.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Protocol, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from . import sharding
from .base import DataError, DataOptions, described, shown
from .folder import FolderSplit, FolderSplits
from .image_ops import ImageTransform, open_rgb
from .recipes import names_with, recipe_named
from .transforms import ToModelInput


class IndexSampler(Protocol):
    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


class EpochShuffle(Sampler[int]):
    """A permutation of range(n) that depends only on (seed, epoch), as TensorLoader's order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())


class EpochTagged(Sampler[tuple[int, int]]):
    """Yields (epoch, index) for the indices of the wrapped sampler (any sampler: ours or DistributedSampler).

    `skip` leaves out the first indices of the epoch's order (a run resumed mid-epoch): they are
    never handed to a worker, so nothing of them is read or decoded.
    """

    def __init__(self, sampler: IndexSampler) -> None:
        self.sampler, self.epoch, self.skip = sampler, 0, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(i)) for i in itertools.islice(self.sampler, self.skip, None))


class FolderDataset(Dataset):
    """Sample (epoch, i) -> (uint8 image (3, S, S), label, error message or "")."""

    def __init__(self, split: FolderSplit, transform: ImageTransform, seed: int) -> None:
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        epoch, i = key
        path = self.split.paths[i]
        rng = random.Random(f"{self.seed}:{epoch}:{i}")
        try:
            image = open_rgb(path)
        except Exception as exc:  # Pillow's decoders meet damaged bytes with many error types (OSError, SyntaxError,
            # struct.error, DecompressionBombError...); the message is raised in the main process by FolderLoader,
            # so that it reaches the user unwrapped, with or without workers
            blank = torch.zeros(3, self.transform.size, self.transform.size, dtype=torch.uint8)
            return blank, int(self.split.labels[i]), f"cannot read image {shown(path)}: {described(exc)}"
        return self.transform(image, rng), int(self.split.labels[i]), ""


class FolderLoader:
    """Iterates (inputs, labels) on `device`; the interface of TensorLoader (set_epoch, len, num_samples).

    `sampler` chooses the indices (default: shuffled per epoch for training, in order otherwise); a
    DistributedSampler fits, and `set_epoch` is passed on to it.
    """

    def __init__(self, dataset: FolderDataset, batch_size: int, to_input: ToModelInput, device: torch.device | str, *,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False, workers: int = 0,
                 sampler: IndexSampler | None = None, world_size: int = 1) -> None:
        if sampler is None:
            sampler = EpochShuffle(len(dataset), seed) if shuffle else SequentialSampler(range(len(dataset)))
        self.sampler = sampler
        self.world_size = world_size
        self.device = torch.device(device)
        self.to_input = to_input
        self._tagged = EpochTagged(sampler)
        # its own generator for the workers' base seed: iterating never draws from torch's global RNG,
        # so a run resumed mid-epoch (which iterates once more) continues the same global random stream
        self._loader = DataLoader(dataset, batch_size=batch_size, sampler=self._tagged, drop_last=drop_last,
                                  num_workers=workers, persistent_workers=workers > 0,
                                  pin_memory=self.device.type == "cuda",
                                  generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        self._tagged.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def share(self, step: int) -> float:
        """This process's fraction of a global training batch: shards are equal (DistributedSampler pads)."""
        return 1.0 / self.world_size

    @property
    def dataset(self) -> FolderDataset:
        return cast(FolderDataset, self._loader.dataset)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches from batch `start` on; the samples of the batches before it are not decoded.

        Each sample's random choices depend only on (seed, epoch, index), so the batches from `start`
        on are those of a full pass.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"start must be in [0, {len(self)}], got {start}")
        return self._batches(start * (self._loader.batch_size or 1))

    def _batches(self, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._tagged.skip = skip  # read when the DataLoader's iterator starts, on the next line
        for images, labels, errors in self._loader:
            failed = [e for e in errors if e]
            if failed:
                more = f" (and {len(failed) - 1} more in this batch)" if len(failed) > 1 else ""
                raise DataError(f"{failed[0]}{more}; remove or replace the file")
            images = images.to(self.device, non_blocking=True)
            yield self.to_input(images), labels.to(self.device, non_blocking=True)


def folder_loaders(splits: FolderSplits, cfg: DataOptions, device: torch.device | str, rank: int = 0,
                   world_size: int = 1) -> tuple[FolderLoader, FolderLoader, int]:
    """Train and val loaders of a folder dataset under its recipe (`data_transforms`); also the image size.

    With `world_size > 1` each process loads its shard (data/sharding.py) in batches of
    batch_size / world_size: the batch sizes in the config are global, as for in-memory datasets.
    """
    recipe = recipe_named(cfg.data_transforms or splits.default_transforms)
    if cfg.crop_padding is not None and recipe.crop != "pad_crop":
        raise DataError(f"crop_padding applies to the padded-crop transforms ({', '.join(names_with('pad_crop'))}), "
                        f"not to {cfg.data_transforms or splits.default_transforms}; remove crop_padding")
    size = cfg.image_size or recipe.size
    padding = recipe.padding if cfg.crop_padding is None else cfg.crop_padding
    flip = True if cfg.random_flip is None else cfg.random_flip
    to_input = ToModelInput(cfg.normalize, recipe.mean, recipe.std, cfg.channels_last)

    def dataset(split: FolderSplit, train: bool) -> FolderDataset:
        return FolderDataset(split, ImageTransform(recipe, size, train, padding, flip), cfg.random_seed)

    workers = cfg.data_loader_workers
    train_set, val_set = dataset(splits.train, True), dataset(splits.val, False)
    train_sampler = val_sampler = None
    if world_size > 1:
        train_sampler = sharding.train_sampler(train_set, rank, world_size, cfg.random_seed, cfg.drop_last)
        val_sampler = sharding.EvalShardSampler(val_set, rank, world_size)
    train = FolderLoader(train_set, cfg.batch_size // world_size, to_input, device, shuffle=True,
                         seed=cfg.random_seed, drop_last=cfg.drop_last, workers=workers, sampler=train_sampler,
                         world_size=world_size)
    val = FolderLoader(val_set, max(1, (cfg.eval_batch_size or cfg.batch_size) // world_size), to_input, device,
                       workers=workers, sampler=val_sampler, world_size=world_size)
    return train, val, size
