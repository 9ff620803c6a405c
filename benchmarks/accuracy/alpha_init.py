"""Accuracy of a float model converted to every bit-width, before any quantized training:
PACT clipping levels fixed at the seed's 8 (10 for linear) vs chosen from data (alpha_init: mse).

    python -m benchmarks.accuracy.alpha_init runs/resnet20_fp/best_model.pt [--out FILE]

The checkpoint is stage 1 of the main job (apps/fashion_mnist/resnet20_fp.yml).
"""

from __future__ import annotations

import argparse
import itertools

import torch

import adabits
from adabits.analysis.evaluation import top1_per_bits
from adabits.data import build_loaders
from adabits.engine import load_config
from adabits.engine.build import build_model
from adabits.quant.clipping import init_clipping_levels

from ..common import command, exit_on_bad_input, report

CONFIG = "apps/fashion_mnist/q_resnet20_adabits.yml"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.alpha_init", description=__doc__.splitlines()[0])
    parser.add_argument("fp_checkpoint")
    parser.add_argument("--out")
    args = parser.parse_args()
    cfg = load_config([f"app:{CONFIG}"]).config
    loaders = build_loaders(cfg, torch.device("cpu"))
    model = build_model(cfg, 10, 1).to(memory_format=torch.channels_last)
    adabits.load_fp_state_dict(model, torch.load(args.fp_checkpoint, weights_only=True)["model"])
    val = list(loaders.val)
    result = {"command": command("accuracy.alpha_init"), "fixed_alpha": top1_per_bits(model, val, cfg.bits_list)}
    images = torch.cat([x for x, _ in itertools.islice(iter(loaders.train), cfg.alpha_init_batches)])
    init_clipping_levels(model, images)
    result["mse_alpha"] = top1_per_bits(model, val, cfg.bits_list)
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.alpha_init"):
        main()
