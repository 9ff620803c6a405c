"""Datasets: IDX reading, Fashion-MNIST discovery and its error, batch augmentation, deterministic loaders."""
from __future__ import annotations

import gzip
import io

import pytest
import torch

from adabits.data import DataError, TensorLoader, ToModelInput, build_loaders, fashion_mnist, random_crop_flip
from adabits.data.idx import read_idx, write_idx
from adabits.engine import TrainConfig


def fake_fashion_mnist(folder, n_train=12, n_val=6):
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", torch.randint(0, 10, (n,), generator=gen, dtype=torch.uint8))


def test_idx_roundtrip_and_truncation(tmp_path):
    data = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", data)
    assert torch.equal(read_idx(tmp_path / "a.gz"), data)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "b").write_bytes(raw[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_from_dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "absent")
    fake_fashion_mnist(tmp_path / "fm")
    loaders = build_loaders(TrainConfig(dataset="FashionMNIST", dataset_dir=str(tmp_path / "fm"), batch_size=5))
    assert loaders.train.images.shape == (12, 1, 28, 28) and loaders.train.images.dtype == torch.uint8
    assert (loaders.num_classes, loaders.in_chans, loaders.image_size) == (10, 1, 28)
    assert len(loaders.train) == 3 and len(loaders.val) == 2


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DataError) as info:
        build_loaders(TrainConfig(dataset="fashion_mnist"))
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "download=true" in message


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "absent")

    class Dropped(io.BytesIO):  # the connection breaks after the first bytes
        def read(self, size=-1):
            if self.tell():
                raise OSError("connection reset")
            return super().read(4)

    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", lambda url, **kwargs: Dropped(b"\x1f\x8b" * 64))
    with pytest.raises(DataError, match="download.*failed.*connection reset"):
        build_loaders(TrainConfig(dataset="fashion_mnist", dataset_dir=str(tmp_path / "dl"), download=True))
    assert list((tmp_path / "dl").iterdir()) == []  # neither half a file nor a temp file


@pytest.mark.skipif(fashion_mnist.locate(None) is None, reason="dataset-fashion-mnist not installed")
def test_the_installed_fashion_mnist():
    loaders = build_loaders(TrainConfig(dataset="fashion_mnist"))
    assert loaders.train.num_samples == 60000 and loaders.val.num_samples == 10000
    assert set(loaders.val.labels.unique().tolist()) == set(range(10))


def test_unknown_dataset_and_image_size_mismatch(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet7'"):
        build_loaders(TrainConfig(dataset="imagenet7"))
    fake_fashion_mnist(tmp_path / "fm")
    with pytest.raises(DataError, match="28x28 images, but the config asks for image_size 32"):
        build_loaders(TrainConfig(dataset="fashion_mnist", dataset_dir=str(tmp_path / "fm"), image_size=32))


def reference_crop_flip(images, padding, dy, dx, flipped):
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    h, w = images.shape[-2:]
    out = []
    for k in range(images.shape[0]):
        crop = padded[k, :, dy[k]:dy[k] + h, dx[k]:dx[k] + w]
        out.append(crop.flip(-1) if flipped[k] else crop)
    return torch.stack(out)


def test_batch_augmentation_matches_a_per_image_reference():
    images = torch.randint(0, 256, (9, 2, 6, 5), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out = random_crop_flip(images, 2, True, gen)
    gen = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (9, 1), generator=gen).flatten().tolist()
    dx = torch.randint(0, 5, (9, 1), generator=gen).flatten().tolist()
    flipped = (torch.rand(9, 1, generator=gen) < 0.5).flatten().tolist()
    assert torch.equal(out, reference_crop_flip(images, 2, dy, dx, flipped))
    assert out.dtype == torch.uint8 and 0 < sum(flipped) < 9


def test_loader_order_depends_only_on_seed_and_epoch():
    images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    labels = torch.arange(20)
    make = lambda: TensorLoader(images, labels, 6, ToModelInput(False, (0.0,), (1.0,)), shuffle=True, seed=1)  # noqa: E731
    a, b = make(), make()
    a.set_epoch(3)
    b.set_epoch(3)
    la = [y for _, y in a]
    lb = [y for _, y in b]
    assert all(torch.equal(x, y) for x, y in zip(la, lb))
    assert sorted(torch.cat(la).tolist()) == list(range(20))  # every sample once, last batch partial
    b.set_epoch(4)
    assert not torch.equal(torch.cat(la), torch.cat([y for _, y in b]))


def test_model_input_is_raw_uint8_values_or_normalised():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert ToModelInput(False, (0.5,), (0.25,))(x).tolist() == [[[[0.0, 255.0]]]]
    assert ToModelInput(True, (0.5,), (0.25,))(x).tolist() == [[[[-2.0, 2.0]]]]
