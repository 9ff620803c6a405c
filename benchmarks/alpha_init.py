"""Accuracy of a float model converted to every bit-width, before any quantized training:
PACT clipping levels fixed at the seed's 8 (10 for linear) vs chosen from data (alpha_init: mse).

    python benchmarks/alpha_init.py runs/resnet20_fp/best_model.pt [--out FILE]

The checkpoint is stage 1 of the main job (apps/fashion_mnist/resnet20_fp.yml).
"""

from __future__ import annotations

import argparse
import itertools

import torch

import adabits
from adabits.data import build_loaders
from adabits.engine import load_config
from adabits.engine.build import build_model
from adabits.quant.clipping import init_clipping_levels
from _results import report  # benchmarks/_results.py, next to this script

CONFIG = "apps/fashion_mnist/q_resnet20_adabits.yml"


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: list, bits: list) -> dict:
    model.eval()
    result = {}
    for b in bits:
        with adabits.use_bits(model, b):
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
        result[b] = round(100 * correct / sum(len(y) for _, y in batches), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp_checkpoint")
    parser.add_argument("--out")
    args = parser.parse_args()
    cfg = load_config([f"app:{CONFIG}"]).config
    loaders = build_loaders(cfg, torch.device("cpu"))
    model = build_model(cfg, 10, 1).to(memory_format=torch.channels_last)
    adabits.load_fp_state_dict(model, torch.load(args.fp_checkpoint, weights_only=True)["model"])
    val = list(loaders.val)
    result = {"command": f"python benchmarks/alpha_init.py {args.fp_checkpoint}",
              "fixed_alpha": accuracy(model, val, cfg.bits_list)}
    images = torch.cat([x for x, _ in itertools.islice(iter(loaders.train), cfg.alpha_init_batches)])
    init_clipping_levels(model, images)
    result["mse_alpha"] = accuracy(model, val, cfg.bits_list)
    report(result, args.out)


if __name__ == "__main__":
    main()
