"""The ViT's table: one model for {8,6,5,4} against a model trained for each bit-width alone, per seed.

    python -m benchmarks.accuracy.vit_accuracy [--seeds 1995 1996] [--work /tmp/adabits_vit_accuracy] [--out FILE]

Per seed: the float model (apps/fashion_mnist/vit_tiny_fp.yml), then from it, with
apps/fashion_mnist/q_vit_tiny_adabits.yml unchanged but for `bits_list`, the joint {8,6,5,4} model
and one model per bit-width, and the ablation of switchable LayerNorm: the joint model with one
LayerNorm shared by every bit-width (`switchbn=false`). Runs one after another; reports top-1 (%)
on the 10,000 test images, the joint model's gap to the individual model of the same seed and
bit-width, and what one LayerNorm per bit-width gains over a shared one.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from ..common import exit_on_bad_input, full_command, report, run_logged
from .main_job import best_top1

STAGE1 = "apps/fashion_mnist/vit_tiny_fp.yml"
STAGE2 = "apps/fashion_mnist/q_vit_tiny_adabits.yml"
BITS = [8, 6, 5, 4]
JOINT = "[8,6,5,4]"
#: row -> its overrides of STAGE2
ROWS: dict[str, list[str]] = {"joint": [f"bits_list={JOINT}"],
                              "joint_shared_layernorm": [f"bits_list={JOINT}", "switchbn=false"],
                              **{f"individual_{b}": [f"bits_list=[{b}]"] for b in BITS}}


def _train(args: list[str], log: Path) -> None:
    run_logged("accuracy.vit_accuracy", [sys.executable, "train.py", *args, "progress=false"],
               Path(__file__).resolve().parents[1], log)


def run_seed(seed: int, work: Path) -> dict[str, Any]:
    """The float model and every row of one seed: top-1 per row and bit-width."""
    folder = work / f"seed{seed}"
    common = [f"log_dir={folder}", f"random_seed={seed}"]
    _train([f"app:{STAGE1}", *common], work / f"seed{seed}_float.log")
    fp_model = folder / Path(STAGE1).stem / "best_model.pt"
    top1: dict[str, Any] = {"float": best_top1(folder / Path(STAGE1).stem / "metrics.jsonl")["32"]}
    for row, overrides in ROWS.items():
        _train([f"app:{STAGE2}", *common, f"run_name={row}", f"fp_pretrained_file={fp_model}", *overrides],
               work / f"seed{seed}_{row}.log")
        top1[row] = best_top1(folder / row / "metrics.jsonl")
    return top1


def joint_minus_individual(seeds: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """bits -> seed -> the joint model's top-1 minus the individual model's (points)."""
    return {str(b): {seed: round(rows["joint"][str(b)] - rows[f"individual_{b}"][str(b)], 2)
                     for seed, rows in seeds.items()} for b in BITS}


def switchable_minus_shared(seeds: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """bits -> seed -> one LayerNorm per bit-width minus one shared LayerNorm, joint models (points)."""
    return {str(b): {seed: round(rows["joint"][str(b)] - rows["joint_shared_layernorm"][str(b)], 2)
                     for seed, rows in seeds.items()} for b in BITS}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.vit_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1995, 1996])
    parser.add_argument("--work", type=Path, default=Path("/tmp/adabits_vit_accuracy"), help="run folders (emptied first)")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    seeds = {str(seed): run_seed(seed, args.work) for seed in args.seeds}
    report({"command": full_command("accuracy.vit_accuracy", args), "recipe": {"stage1": STAGE1, "stage2": STAGE2},
            "top1": seeds, "joint_minus_individual": joint_minus_individual(seeds),
            "switchable_minus_shared_layernorm": switchable_minus_shared(seeds)}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.vit_accuracy"):
        main()
