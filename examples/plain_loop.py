"""adabits in a plain PyTorch loop: a float model of your own -> one switchable model -> a deployed file that
switches bit-width per call.

    python examples/plain_loop.py --out runs/plain_loop

1. A small CNN is trained in plain PyTorch on Fashion-MNIST (your pretrained model; nothing of adabits).
2. `adabits.quantize_model(..., calibration=...)` converts it for 8, 6, 5 and 4 bits and calibrates each.
3. `adabits.joint_step` fine-tunes every bit-width jointly inside an ordinary loop and optimizer.
4. `adabits.evaluate` reports every bit-width; `adabits.export_model` writes one ExecuTorch `.pte`.
5. `adabits.runtime.load(...).run(images, bits=...)` serves it at any of its bit-widths.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import adabits
import adabits.analysis.evaluation
from adabits.data import ToModelInput, build_splits
from adabits.engine import TrainConfig
from adabits.runtime import load

BITS = [8, 6, 5, 4]


def float_model() -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 16, 1), *block(16, 32, 2), *block(32, 64, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def batches(images: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator):
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images) - size + 1, size):
        index = order[start:start + size]
        yield images[index], labels[index]


def load_data(train_images: int, test_images: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fashion-MNIST as normalised tensors: (train images, train labels, test images, test labels)."""
    splits = build_splits(TrainConfig(dataset="fashion_mnist"))  # Debian's package, or one line saying how to get it
    to_input = ToModelInput(True, splits.mean, splits.std)
    return (to_input(splits.train_images[:train_images]), splits.train_labels[:train_images],
            to_input(splits.val_images[:test_images]), splits.val_labels[:test_images])


def train_float(train_x: Tensor, train_y: Tensor, epochs: int, generator: torch.Generator) -> nn.Module:
    """Your float model, trained your way (nothing of adabits)."""
    model = float_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for images, labels in batches(train_x, train_y, 128, generator):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
    return model.eval()


def top1(results: dict) -> dict:
    return {bits: 100 * (1 - metrics["top1_error"]) for bits, metrics in results.items()}


def deploy(model: nn.Module, train_x: Tensor, test_x: Tensor, out: Path) -> tuple[Path, str, dict]:
    """One `.pte` for every bit-width, and how often it agrees with the PyTorch model at each (a `.pte` plans
    memory for batches of up to 32)."""
    out.mkdir(parents=True, exist_ok=True)
    exported = adabits.export_model(model, out / "model.pte", format="pte", input_shape=(1, 28, 28),
                                    calibration=train_x[:256])
    deployed = load(exported.path)
    agreement = {}
    for bits in BITS:
        with adabits.use_bits(model.eval(), bits), torch.no_grad():
            expected = model(test_x[:256]).argmax(1)
        served = torch.cat([torch.from_numpy(deployed.run(chunk, bits=bits)) for chunk in test_x[:256].split(32)])
        agreement[bits] = float((served.argmax(1) == expected).float().mean())
    return exported.path, exported.graph, agreement


def arguments(argv: list[str] | None, out: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=out)
    parser.add_argument("--train-images", type=int, default=60_000)
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--float-epochs", type=int, default=1)
    parser.add_argument("--joint-steps", type=int, default=200)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv, "runs/plain_loop")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train_x, train_y, test_x, test_y = load_data(args.train_images, args.test_images)
    test = list(zip(test_x.split(500), test_y.split(500)))

    # 1. your float model, trained your way
    model = train_float(train_x, train_y, args.float_epochs, generator)
    float_top1 = adabits.analysis.evaluation.top1(model, test)

    # 2. one switchable model, calibrated at every bit-width before any training
    model = adabits.quantize_model(model, BITS, calibration=[train_x[:512]])
    calibrated = adabits.evaluate(model, test, topk=(1,))

    # 3. joint fine-tuning inside your own loop
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    steps = 0
    while steps < args.joint_steps:
        for images, labels in batches(train_x, train_y, 128, generator):
            optimizer.zero_grad()
            adabits.joint_step(model, images, labels)
            optimizer.step()
            steps += 1
            if steps == args.joint_steps:
                break

    # 4. every bit-width evaluated, one file exported; 5. the deployed file, switched per call
    trained = adabits.evaluate(model, test, topk=(1,))
    path, graph, agreement = deploy(model, train_x, test_x, Path(args.out))
    result = {"float_top1": float_top1, "calibrated_top1": top1(calibrated), "trained_top1": top1(trained),
              "exported": str(path), "graph": graph, "runtime_agreement": agreement}
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
