"""Does the folder-dataset loader keep up with training? Images/s of the ImageNet loader (JPEG decode,
RandomResizedCrop(224), flip; `data_loader_workers` processes) next to the training images/s of
MobileNet V2 at 224 (float and 4 bits), and training fed by that loader against training on a fixed batch.

One process, the variants interleaved round by round so machine noise hits them alike; medians. Run:

    python -m benchmarks.data.data_loading [--images 256] [--size 224] [--batch 32] [--workers 2] [--rounds 5] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn

import adabits
from adabits.data import build_loaders
from adabits.engine import TrainConfig

from ..common import exit_on_bad_input, full_command, report


def write_jpegs(root: Path, count: int, classes: int = 10, size: int = 224) -> None:
    """`count` training JPEGs (and a few val ones) of smooth random content, about as compressible as photos."""
    if (root / "done").is_file():
        return
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = torch.rand(1, 3, 14, 14, generator=gen) * 255
            img = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
            img = (img + torch.randn(img.shape, generator=gen) * 8).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
            Image.frombytes("RGB", (size, size), img.contiguous().numpy().tobytes()).save(folder / f"{i}.JPEG", quality=90)
    (root / "done").write_text("ok")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn(cin, hidden, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, act=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def float_mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """The standard MobileNet V2 (width 1.0, 3.50 M parameters), for when the registry has none yet."""
    layers = _conv_bn(3, 32, 3, 2)
    cin = 32
    for expand, cout, repeats, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for k in range(repeats):
            layers.append(_InvertedResidual(cin, cout, stride if k == 0 else 1, expand))
            cin = cout
    layers += _conv_bn(320, 1280, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers)


def make_model(bits: int) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    if "mobilenet_v2" in adabits.list_models():
        return adabits.create_model("mobilenet_v2", bits_list=[bits], num_classes=1000), "adabits mobilenet_v2"
    model = float_mobilenet_v2()
    source = "float MobileNet V2 defined in this script"
    if bits < 32:
        model = adabits.quantize_model(model, bits_list=[bits])
        source += ", converted by adabits.quantize_model"
    return model, source


def make_train_step(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def timed(fn: Callable[[], int]) -> float:
    """Images per second of one call of fn (which returns how many images it handled)."""
    t0 = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data.data_loading", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="side of the generated JPEGs (ImageNet's average is ~400x350)")
    parser.add_argument("--data", default="/tmp/adabits-bench-jpegs")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    write_jpegs(Path(args.data), args.images, size=args.size)
    cfg = TrainConfig(dataset="imagenet1k", dataset_dir=args.data, batch_size=args.batch,
                      data_loader_workers=args.workers, drop_last=True)
    loader = build_loaders(cfg).train
    fixed_images = torch.randint(0, 256, (args.batch, 3, 224, 224)).float()
    fixed_labels = torch.randint(0, 10, (args.batch,))
    steps, sources = {}, {}
    for name, bits in (("fp32", 32), ("4bit", 4)):
        model, sources[name] = make_model(bits)
        steps[name] = make_train_step(model)

    def load_epoch(epoch: int) -> int:
        loader.set_epoch(epoch)
        return sum(int(x.shape[0]) for x, _ in loader)

    def train_fixed(step: Callable) -> int:
        step(fixed_images, fixed_labels)
        return args.batch

    def train_fed(step: Callable, epoch: int, batches: int = 2) -> int:
        loader.set_epoch(epoch)
        seen = 0
        for k, (x, y) in enumerate(loader):
            if k == batches:
                break
            step(x, y)
            seen += int(x.shape[0])
        return seen

    load_epoch(0)  # starts the workers
    for step in steps.values():
        train_fixed(step)
    results: dict[str, list[float]] = {"loader": [], "fp32_fixed": [], "4bit_fixed": [], "fp32_fed": []}
    for r in range(args.rounds):
        results["loader"].append(timed(lambda r=r: load_epoch(r + 1)))
        results["fp32_fixed"].append(timed(lambda: train_fixed(steps["fp32"])))
        results["4bit_fixed"].append(timed(lambda: train_fixed(steps["4bit"])))
        results["fp32_fed"].append(timed(lambda r=r: train_fed(steps["fp32"], 100 + r)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items()), flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    out = {
        "command": full_command("data.data_loading", args, ["out"]),
        "data": f"{args.images} generated {args.size}x{args.size} JPEGs (quality 90), imagenet1k_basic train transforms",
        "models": sources,
        "images_per_s_median": {k: round(v, 1) for k, v in median.items()},
        "images_per_s_rounds": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "loader_over_fp32_training": round(median["loader"] / median["fp32_fixed"], 2),
        "loader_over_4bit_training": round(median["loader"] / median["4bit_fixed"], 2),
        "fed_over_fixed_fp32": round(median["fp32_fed"] / median["fp32_fixed"], 2),
    }
    report(out, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("data.data_loading"):
        main()
