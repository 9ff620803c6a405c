"""CIFAR-10 / CIFAR-100 from small files laid out exactly as the official python-version archives."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from adabits.data import DataError, build_loaders
from adabits.engine import ConfigError, TrainConfig
from adabits.engine.config import build_config


def write_batch(path, data: np.ndarray, labels: list[int], label_key: bytes) -> None:
    """A batch file as the official ones: a protocol-2 pickle of a dict with bytes keys and a uint8 array."""
    batch = {b"batch_label": b"testing batch", b"data": data, label_key: labels,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def fake_cifar10(parent, per_batch=3, seed=0):
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        write_batch(folder / name, data, labels, b"labels")
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": per_batch}, f, protocol=2)
    return folder, written


def fake_cifar100(parent, n_train=7, n_test=4):
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"filenames": [b"x.png"] * n, b"batch_label": b"b", b"fine_labels": [99 - i for i in range(n)],
                 b"coarse_labels": [19] * n, b"data": data}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"apple"] * 100, b"coarse_label_names": [b"fruit"] * 20}, f, protocol=2)
    return folder


def cfg(**kw):
    return TrainConfig(**{"batch_size": 4, **kw})


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_batches_load_in_order_with_the_official_pixel_layout(tmp_path, point_at):
    folder, written = fake_cifar10(tmp_path)
    loaders = build_loaders(cfg(dataset="CIFAR10", dataset_dir=str(tmp_path if point_at == "parent" else folder)))
    train = loaders.train
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert (loaders.num_classes, loaders.in_chans, loaders.image_size) == (10, 3, 32)
    expected_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.labels.tolist() == expected_labels
    first = written["data_batch_1"][0][0]  # 1024 red, 1024 green, 1024 blue, rows of 32
    assert train.images[0, 1].flatten().tolist() == first[1024:2048].tolist()
    assert train.images[0, 2, 3, 5] == first[2048 + 3 * 32 + 5]
    assert loaders.val.labels.tolist() == written["test_batch"][1]


def test_cifar10_val_batches_are_raw_values_without_normalize(tmp_path):
    fake_cifar10(tmp_path)
    loaders = build_loaders(cfg(dataset="cifar10", dataset_dir=str(tmp_path), eval_batch_size=3))
    inputs, labels = next(iter(loaders.val))
    assert inputs.dtype == torch.float32 and torch.equal(inputs, loaders.val.images.float())
    normalized = build_loaders(cfg(dataset="cifar10", dataset_dir=str(tmp_path), normalize=True, eval_batch_size=3))
    x = next(iter(normalized.val))[0]
    assert x[0, 0, 0, 0].item() == pytest.approx((inputs[0, 0, 0, 0].item() / 255 - 0.4914) / 0.2023, abs=1e-5)


def test_cifar100_fine_labels(tmp_path):
    fake_cifar100(tmp_path)
    loaders = build_loaders(cfg(dataset="cifar100", dataset_dir=str(tmp_path)))
    assert loaders.num_classes == 100
    assert loaders.train.labels.tolist() == [99, 98, 97, 96, 95, 94, 93]
    assert loaders.val.images.shape == (4, 3, 32, 32)


def test_cinic_statistics_apply_to_cifar_and_imagenet_recipes_do_not(tmp_path):
    fake_cifar10(tmp_path)
    base = dict(dataset="cifar10", dataset_dir=str(tmp_path), normalize=True)
    x = next(iter(build_loaders(cfg(**base, data_transforms="cinic")).val))[0]
    raw = build_loaders(cfg(**base)).val.images[0, 0, 0, 0].item()
    assert x[0, 0, 0, 0].item() == pytest.approx((raw / 255 - 0.4789) / 0.2421, abs=1e-5)
    with pytest.raises(DataError, match="needs a folder dataset.*takes: cifar, cinic"):
        build_loaders(cfg(**base, data_transforms="imagenet1k_mobile"))
    with pytest.raises(ConfigError, match="unknown data_transforms 'imagenet'.*imagenet1k_basic"):
        build_config({"data_transforms": "imagenet"})


def test_missing_cifar_names_the_folder_and_the_archive(tmp_path):
    with pytest.raises(DataError) as info:
        build_loaders(cfg(dataset="cifar100", dataset_dir=str(tmp_path)))
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "cifar-100-python.tar.gz" in message
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="tar xzf"):
        build_loaders(cfg(dataset="cifar100", dataset_dir=str(tmp_path)))


def test_corrupt_or_incomplete_cifar_names_the_file(tmp_path):
    folder, _ = fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        build_loaders(cfg(dataset="cifar10", dataset_dir=str(tmp_path)))
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        build_loaders(cfg(dataset="cifar10", dataset_dir=str(tmp_path)))
