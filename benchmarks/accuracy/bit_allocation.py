"""Per-layer bit allocation from one trained model (issue 30): the accuracy-weight-bytes front of `adabits.search`
against the uniform bit-widths, with and without mixed-assignment training, and a chosen assignment against the same
assignment trained alone.

    python -m benchmarks.accuracy.bit_allocation --out benchmarks/results/accuracy/bit_allocation.json

Per bit set ({4,3,2} and {8,6,5,4}) and model (the plain-PyTorch ResNet-20 of benchmarks/accuracy/plain_models.py, trained in
float on Fashion-MNIST, then converted with calibration as in the pretrained-start benchmark):
- "uniform": `--steps` joint steps of the uniform bit-widths (`adabits.joint_step`);
- "mixed": the same steps plus `--mixed` random per-layer assignments per step (`assignments=`);
- each searched (sensitivity on 512 training images, every candidate measured on the 10,000 test images);
- "alone": the searched assignment that gains most over the line between uniform points, trained alone for the same
  steps from the same calibrated start (what the usual mixed-precision tools pay for).
The straight line between neighbouring uniform points is what switching whole models offers; the front's gain over
it at each budget, and at the middle uniform bit-width's bytes, is reported.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import adabits
from adabits.analysis.search import Front, search
from adabits.joint import random_assignments

from ..common import exit_on_bad_input, full_command, report
from .plain_models import cosine_factor
from .pretrained_start import JOINT_LR, JOINT_MOMENTUM, MODELS, calibration_batches, endless, float_model, load_data

BIT_SETS = {"432": [4, 3, 2], "8654": [8, 6, 5, 4]}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train(model: nn.Module, batches: Any, steps: int, bits: list, mixed: int, seed: int,
          alone: dict[str, Any] | None = None) -> float:
    """`steps` joint steps (SGD, lr cosine to 0): the uniform `bits` plus `mixed` random assignments per step, or
    only the assignment `alone`. Returns the seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=JOINT_LR, momentum=JOINT_MOMENTUM)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, steps))
    model.train()
    start = time.perf_counter()
    for step, (images, labels) in enumerate(itertools.islice(batches, steps)):
        opt.zero_grad(set_to_none=True)
        if alone is not None:
            adabits.joint_step(model, images, labels, bits=[], assignments=[alone])
        else:
            adabits.joint_step(model, images, labels, bits=bits, assignments=random_assignments(model, mixed, seed, step))
        opt.step()
        schedule.step()
    model.eval()
    return round(time.perf_counter() - start, 1)


def line_gain(front: Front) -> list[dict[str, float]]:
    """Each candidate's top-1 minus the straight line between the uniform points around its cost."""
    points = sorted((u.cost, u.top1) for u in front.uniform)
    rows = []
    for c in sorted(front.candidates, key=lambda c: c.cost):
        for (c0, a0), (c1, a1) in zip(points, points[1:]):
            if c0 <= c.cost <= c1:
                line = a0 + (a1 - a0) * (c.cost - c0) / (c1 - c0)
                rows.append({"cost": c.cost, "top1": round(c.top1, 2), "line": round(line, 2),
                             "gain": round(c.top1 - line, 2)})
    return rows


def summary(front: Front) -> dict[str, Any]:
    uniform = {str(u.uniform): {"bytes": u.cost, "top1": round(u.top1, 2)} for u in front.uniform}
    middle = sorted(front.uniform, key=lambda u: u.cost)[len(front.uniform) // 2]
    within = front.best_within(middle.cost)
    return {"uniform": uniform, "front": line_gain(front), "seconds": round(front.seconds, 1),
            "at_middle_bytes": {"bits": middle.uniform, "uniform_top1": round(middle.top1, 2),
                                "front_top1": round(within.top1, 2), "gain": round(within.top1 - middle.top1, 2),
                                "assignment": within.assignment}}


def bench(bits_name: str, args: argparse.Namespace, data: Any, float_net: nn.Module) -> dict[str, Any]:
    bits = BIT_SETS[bits_name]
    calibrated = adabits.quantize_model(copy.deepcopy(float_net), bits, config=adabits.QuantConfig.pretrained(),
                                        calibration=calibration_batches(data.calibration))
    held_out, sensitivity_set = data.test, list(itertools.islice(endless(data.train), 4))
    shape = (1, 28, 28)
    out: dict[str, Any] = {"bits": bits}
    fronts = {}
    for variant, mixed in (("uniform", 0), ("mixed", args.mixed)):
        model = copy.deepcopy(calibrated)
        torch.manual_seed(args.seed)
        seconds = train(model, endless(data.train), args.steps, bits, mixed, args.seed)
        fronts[variant] = search(model, sensitivity_set, held_out, shape, points=args.points)
        out[variant] = {"train_seconds": seconds, **summary(fronts[variant])}
        _log(f"{bits_name} {variant}: {out[variant]['uniform']} middle {out[variant]['at_middle_bytes']['gain']:+.2f}")
    mixed_points = [c for c in fronts["uniform"].candidates if len(set(c.assignment.values())) > 1]
    if mixed_points:  # the searched assignment that gains most over the line, trained alone from the same start
        gains = {p["cost"]: p["gain"] for p in out["uniform"]["front"]}
        best = max(mixed_points, key=lambda c: gains.get(c.cost, float("-inf")))
        alone = copy.deepcopy(calibrated)
        torch.manual_seed(args.seed)
        seconds = train(alone, endless(data.train), args.steps, bits, 0, args.seed, alone=best.assignment)
        adabits.set_bits(alone, best.assignment)
        out["alone"] = {"train_seconds": seconds, "bytes": best.cost, "assignment": best.assignment,
                        "top1": round(adabits.analysis.evaluation.top1(alone, held_out), 2),
                        "joint_top1": round(best.top1, 2)}
        _log(f"{bits_name} alone: {out['alone']}")
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`{result['command']}`", ""]
    for row in result["models"].values():
        lines += [f"### ResNet-20, bits {row['bits']}", "",
                  "| training | uniform top-1 (weight bytes) | front vs the line between uniform points | "
                  "at the middle uniform's bytes |", "|---|---|---|---|"]
        for variant in ("uniform", "mixed"):
            v = row[variant]
            uniform = ", ".join(f"{b}: {u['top1']:.2f} ({u['bytes']:,.0f})" for b, u in v["uniform"].items())
            gains = [p["gain"] for p in v["front"]]
            span = f"{min(gains):+.2f} to {max(gains):+.2f}" if gains else "n/a"
            mid = v["at_middle_bytes"]
            lines.append(f"| {variant} | {uniform} | {span} | {mid['front_top1']:.2f} vs {mid['uniform_top1']:.2f} "
                         f"({mid['gain']:+.2f}) |")
        if "alone" in row:
            lines.append(f"\nThe searched assignment that gains most over the line ({row['alone']['bytes']:,.0f} bytes): "
                         f"{row['alone']['joint_top1']:.2f} from the one model, {row['alone']['top1']:.2f} trained alone "
                         "for the same steps from the same calibrated start.")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", nargs="+", choices=list(BIT_SETS), default=list(BIT_SETS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--mixed", type=int, default=2)
    parser.add_argument("--points", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--test-images", type=int, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/pretrained_start"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    data = load_data(args.seed, args.train_images, args.test_images, 512)
    float_net, _training = float_model("resnet20", MODELS["resnet20"], data, args.seed, args.cache_dir)
    float_net = float_net.to(memory_format=torch.contiguous_format)
    result = {"command": full_command("accuracy.bit_allocation", args), "settings": {"steps": args.steps, "mixed": args.mixed},
              "float_top1": round(adabits.analysis.evaluation.top1(float_net, data.test), 2),
              "models": {name: bench(name, args, data, float_net) for name in args.bits}}
    full = report(result, args.out, echo=False)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(markdown(full) + "\n")
    else:
        print(markdown(full))
    return full


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.bit_allocation"):
        main()
