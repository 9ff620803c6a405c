"""Stage 2 of the main job in each training mode, from one float model: its wall time and the top-1 it ends at.

    python -m benchmarks.stage2_modes --fp-model runs/resnet20_fp/best_model.pt [--seeds 1995 1996]
        [--modes fp32 bf16 compile_quantizers] [--work /tmp/adabits_stage2_modes] [--out FILE]

Runs `train.py app:apps/fashion_mnist/q_resnet20_adabits.yml` once per (seed, mode), the modes of a
seed one after another, each process alone and timed whole (start-up, clipping-level choice, 200 joint
steps, evaluation), with an empty Inductor cache of its own: a compiled mode pays its cold compile as a
fresh clone would. Reports each run's top-1 per bit-width and its gap to the fp32 run of the same seed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ._results import BadInput, exit_on_bad_input, full_command, report, run_logged
from .main_job import STAGES, best_top1

MODES: dict[str, list[str]] = {
    "fp32": [],
    "bf16": ["precision=bf16"],
    "compile_quantizers": ["compile_quantizers=true"],
}


def run_mode(mode: str, seed: int, fp_model: Path, work: Path) -> dict[str, Any]:
    """One stage-2 run: its seconds and top-1 per bit-width."""
    name = f"{mode}_seed{seed}"
    cache = work / f"inductor_cache_{name}"
    args = [sys.executable, "train.py", f"app:{STAGES['stage2']}", f"fp_pretrained_file={fp_model}",
            f"log_dir={work}", f"run_name={name}", f"random_seed={seed}", *MODES[mode]]
    try:
        seconds = run_logged("stage2_modes", args, Path(__file__).resolve().parents[1], work / f"{name}.log",
                             env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"mode": mode, "seed": seed, "seconds": seconds, "top1": best_top1(work / name / "metrics.jsonl")}


def gaps_to_fp32(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """mode -> seed -> bits -> top-1 minus the fp32 run's of the same seed (points)."""
    base = {run["seed"]: run["top1"] for run in runs if run["mode"] == "fp32"}
    gaps: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        if run["mode"] != "fp32" and run["seed"] in base:
            gaps.setdefault(run["mode"], {})[str(run["seed"])] = {
                bits: round(top1 - base[run["seed"]][bits], 2) for bits, top1 in run["top1"].items()}
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stage2_modes", description=__doc__.splitlines()[0])
    parser.add_argument("--fp-model", type=Path, required=True, help="stage 1's best_model.pt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1995, 1996])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/adabits_stage2_modes"), help="run folders (emptied first)")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args()
    if not args.fp_model.is_file():
        raise BadInput(f"--fp-model {args.fp_model} is not a file: pass stage 1's best_model.pt")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    runs = [run_mode(mode, seed, args.fp_model.resolve(), args.work) for seed in args.seeds for mode in args.modes]
    report({"command": full_command("stage2_modes", args),
            "what": "stage 2 of the main job per training mode from one float model, each run alone",
            "fp_model": str(args.fp_model), "runs": runs, "top1_gap_to_fp32": gaps_to_fp32(runs)}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("stage2_modes"):
        main()
