"""ImageNet (JPEG class folders) and CINIC-10 (PNG class folders) written small into tmp_path, loaded
through build_loaders: shapes, labels, the transforms' semantics, determinism across worker counts,
the imagenet1k_val50k split and every layout error."""
from __future__ import annotations

import random

import pytest
import torch
from _engine_helpers import tiny_args
from PIL import Image

from adabits.cli import main
from adabits.data import DataError, build_loaders, imagenet
from adabits.data.image_ops import resized_crop_box
from adabits.engine import ConfigError, TrainConfig
from adabits.engine.config import build_config

CLASSES = ("n01440764", "n01443537", "n01484850")


def write_image(path, width, height, seed, fmt):
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    Image.frombytes("RGB", (width, height), pixels.numpy().tobytes()).save(path, fmt)
    return pixels


def fake_imagenet(root, n_train=4, n_val=2, classes=CLASSES):
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                write_image(folder / f"{name}_{i}.JPEG", 40 + 7 * i, 30 + 5 * c, 100 * c + 10 * i + len(split), "JPEG")
    return root


def fake_cinic(root, n=3):
    pixels = {}
    for split in ("train", "valid", "test"):
        for c, name in enumerate(("airplane", "automobile")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels[(split, c, i)] = write_image(folder / f"cifar10-{split}-{i}.png", 32, 32, 10 * c + i, "PNG")
    return root, pixels


def inet(root, **kw):
    return TrainConfig(**{"dataset": "imagenet1k", "dataset_dir": str(root), "batch_size": 4, "image_size": 24, **kw})


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_imagenet_batches_are_raw_uint8_values_of_the_right_shape(tmp_path):
    loaders = build_loaders(inet(fake_imagenet(tmp_path)))
    assert (loaders.num_classes, loaders.in_chans, loaders.image_size) == (3, 3, 24)
    assert (len(loaders.train), loaders.train.num_samples, len(loaders.val), loaders.val.num_samples) == (3, 12, 2, 6)
    train = batches(loaders.train, 0)
    assert [tuple(x.shape) for x, _ in train] == [(4, 3, 24, 24)] * 3
    assert sorted(torch.cat([y for _, y in train]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    x = train[0][0]
    assert x.dtype == torch.float32 and torch.equal(x, x.round()) and 0 <= x.min() and x.max() <= 255
    assert [y.tolist() for _, y in loaders.val] == [[0, 0, 1, 1], [2, 2]]


def test_val_transform_is_resize_short_side_then_center_crop(tmp_path):
    fake_imagenet(tmp_path)
    loaders = build_loaders(inet(tmp_path, image_size=16, eval_batch_size=6))
    inputs, _ = next(iter(loaders.val))
    path = tmp_path / "val" / CLASSES[0] / f"{CLASSES[0]}_1.JPEG"  # 47x30: short side 30 -> 18 (16 / 0.875)
    img = Image.open(path).convert("RGB").resize((int(18 * 47 / 30), 18), Image.Resampling.BILINEAR)
    left = int(round((img.width - 16) / 2.0))
    ref = img.crop((left, 1, left + 16, 17))
    expected = torch.frombuffer(bytearray(ref.tobytes()), dtype=torch.uint8).view(16, 16, 3).permute(2, 0, 1)
    assert torch.equal(inputs[1], expected.float())


def test_a_train_sample_is_its_crop_box_resized_then_maybe_flipped(tmp_path):
    fake_imagenet(tmp_path)
    loaders = build_loaders(inet(tmp_path, image_size=20, random_seed=3))
    dataset = loaders.train.dataset
    for i in range(6):
        image, label, error = dataset[(5, i)]
        rng = random.Random(f"3:5:{i}")  # the documented seed of sample i in epoch 5
        img = Image.open(dataset.split.paths[i]).convert("RGB")
        left, top, w, h = resized_crop_box(img.width, img.height, (0.08, 1.0), rng)
        ref = img.crop((left, top, left + w, top + h)).resize((20, 20), Image.Resampling.BILINEAR)
        expected = torch.frombuffer(bytearray(ref.tobytes()), dtype=torch.uint8).view(20, 20, 3).permute(2, 0, 1)
        expected = expected.flip(-1) if rng.random() < 0.5 else expected
        assert torch.equal(image, expected) and label == int(dataset.split.labels[i]) and error == ""


def test_random_resized_crop_box_stays_inside_with_torchvision_sampling():
    rng = random.Random(0)
    boxes = [resized_crop_box(50, 40, (0.08, 1.0), rng) for _ in range(300)]
    assert all(0 <= left and 0 <= top and left + w <= 50 and top + h <= 40 for left, top, w, h in boxes)
    areas = [w * h / 2000 for _, _, w, h in boxes]
    assert min(areas) < 0.2 and max(areas) > 0.8  # the scale range is really sampled
    assert resized_crop_box(1000, 10, (0.9, 1.0), random.Random(0)) == (493, 0, 13, 10)  # fallback: center, ratio 4/3


@pytest.mark.parametrize("recipe", ["imagenet1k_basic", "imagenet1k_inception"])
def test_batches_do_not_depend_on_the_worker_count(tmp_path, recipe):
    fake_imagenet(tmp_path)
    runs = {}
    for workers in (0, 2):
        loaders = build_loaders(inet(tmp_path, data_loader_workers=workers, data_transforms=recipe))
        runs[workers] = batches(loaders.train, 3) + list(loaders.val)
    for (xa, ya), (xb, yb) in zip(runs[0], runs[2], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = build_loaders(inet(tmp_path, data_transforms=recipe))
    assert not torch.equal(torch.cat([x for x, _ in batches(other.train, 4)]), torch.cat([x for x, _ in runs[0][:3]]))


def test_processes_share_the_folder_dataset_without_overlap(tmp_path):
    """Two ranks: disjoint training shards of batch_size / 2, and every val image counted exactly once."""
    cfg = inet(fake_imagenet(tmp_path, n_val=3))  # 9 val images: shards of 4 and 5
    ranks = [build_loaders(cfg, "cpu", rank, 2) for rank in (0, 1)]
    assert [r.val.num_samples for r in ranks] == [4, 5] and [r.train.share(0) for r in ranks] == [0.5, 0.5]
    val = [y for r in ranks for _, y in batches(r.val, 0)]
    assert sorted(torch.cat(val).tolist()) == [0] * 3 + [1] * 3 + [2] * 3
    for epoch in (0, 1):
        train = [batches(r.train, epoch) for r in ranks]
        assert {tuple(x.shape) for part in train for x, _ in part} == {(2, 3, 24, 24)}
        assert sorted(torch.cat([y for part in train for _, y in part]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_cinic_reads_train_and_valid_and_keeps_pixels_exact(tmp_path):
    root, pixels = fake_cinic(tmp_path / "CINIC-10")
    loaders = build_loaders(TrainConfig(dataset="cinic10", dataset_dir=str(tmp_path), batch_size=6, normalize=False))
    assert (loaders.num_classes, loaders.image_size, loaders.train.num_samples, loaders.val.num_samples) == (2, 32, 6, 6)
    val_inputs, val_labels = next(iter(loaders.val))
    assert val_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(val_inputs[4], pixels[("valid", 1, 1)].permute(2, 0, 1).float())
    train_inputs, _ = next(iter(loaders.train))
    assert (train_inputs == 0).flatten(1).any(1).any()  # padding 4 shows up as zero borders


def test_val50k_holds_out_the_originals_images(tmp_path, monkeypatch):
    monkeypatch.setattr(imagenet, "HELD_OUT", 5)
    fake_imagenet(tmp_path)
    cfg = inet(tmp_path, dataset="imagenet1k_val50k", random_seed=7)
    loaders = build_loaders(cfg)
    assert (loaders.train.num_samples, loaders.val.num_samples) == (7, 5)
    # the original: ImageFolder's sorted samples, random.seed(seed); random.shuffle(samples); first 50k held out
    samples = sorted(str(p) for p in (tmp_path / "train").rglob("*.JPEG"))
    random.seed(7)
    random.shuffle(samples)
    held_out = {str(p) for p in samples[:5]}
    val_set = loaders.val.dataset.split
    train_set = loaders.train.dataset.split
    assert {val_set.paths[i] for i in range(5)} == held_out
    assert not held_out & {train_set.paths[i] for i in range(7)}
    monkeypatch.setattr(imagenet, "HELD_OUT", 12)
    with pytest.raises(DataError, match="holds out 12 training images.*only 12"):
        build_loaders(cfg)


def test_missing_folder_and_wrong_layouts_say_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'none'} does not exist.*train/<class>/\\*.JPEG and val/<class>/\\*.JPEG"):
        build_loaders(inet(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not found in .*empty: expected train/<class>"):
        build_loaders(inet(tmp_path / "empty"))
    root = fake_imagenet(tmp_path / "flat")
    for path in list((root / "val").rglob("*.JPEG")):
        path.rename(root / "val" / path.name)
    for folder in (root / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()
    with pytest.raises(DataError, match="val holds 6 image files but no class folders; expected train/<class>"):
        build_loaders(inet(root))
    with pytest.raises(DataError, match="CINIC-10: missing folder .*valid \\(expected train/<class>/\\*.png and valid"):
        build_loaders(TrainConfig(dataset="cinic10", dataset_dir=str(root)))


def test_class_folders_must_agree(tmp_path):
    root = fake_imagenet(tmp_path / "a")
    with pytest.raises(DataError, match="3 class folders in train/, but the config sets num_classes 1000"):
        build_loaders(inet(root, num_classes=1000))
    (root / "train" / "n09999999").mkdir()
    with pytest.raises(DataError, match="val/ has 3 class folders and train/ has 4.*missing in val/: n09999999"):
        build_loaders(inet(root))
    (root / "val" / "n09999999").mkdir()
    with pytest.raises(DataError, match="class folder .*train/n09999999 holds no image files"):
        build_loaders(inet(root))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_image_stops_with_its_path(tmp_path, workers):
    root = fake_imagenet(tmp_path)
    bad = root / "train" / CLASSES[1] / f"{CLASSES[1]}_2.JPEG"
    bad.write_bytes(b"not a jpeg")
    loaders = build_loaders(inet(root, data_loader_workers=workers))
    with pytest.raises(DataError) as info:
        list(loaders.train)
    assert str(info.value).startswith(f"cannot read image {bad}: UnidentifiedImageError") and "Traceback" not in str(info.value)


def test_data_keys_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="unknown data_loader 'imagenet1k_fast'; known: imagenet1k_basic, cifar, cinic"):
        build_config({"data_loader": "imagenet1k_fast"})
    with pytest.raises(ConfigError, match="data_loader_workers"):
        build_config({"data_loader_workers": -1})
    with pytest.raises(DataError, match="crop_padding applies to the padded-crop transforms \\(cifar, cinic\\)"):
        build_loaders(inet(fake_imagenet(tmp_path), crop_padding=4))


def test_synthetic_data_of_any_shape_and_class_count():
    loaders = build_loaders(TrainConfig(dataset="synthetic", image_size=20, in_chans=5, num_classes=13,
                                        synthetic_train_size=26, synthetic_val_size=9, batch_size=8))
    x, y = next(iter(loaders.train))
    assert x.shape == (8, 5, 20, 20) and (loaders.num_classes, loaders.val.num_samples) == (13, 9)
    assert int(loaders.train.labels.max()) < 13


def test_train_and_test_end_to_end_on_a_jpeg_folder(tmp_path, capsys):
    fake_imagenet(tmp_path / "inet")
    args = tiny_args(tmp_path / "runs", dataset="imagenet1k", dataset_dir=str(tmp_path / "inet"), in_chans=3,
                     num_classes=3, image_size=16, batch_size=4, num_epochs=1, data_loader_workers=2,
                     alpha_init="mse", alpha_init_batches=2)
    assert main(["train", *args]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    assert main(["test", *args]) == 0
    assert "top1 acc" in capsys.readouterr().out
