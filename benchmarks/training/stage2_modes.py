"""Stage 2 of the main job in each training mode, from one float model: its wall time and the top-1 it ends at.

    python -m benchmarks.training.stage2_modes --fp-model runs/resnet20_fp/best_model.pt [--seeds 1995 1996]
        [--modes fp32 bf16 compile_quantizers glibc_defaults] [--baseline REV] [--work /tmp/adabits_stage2_modes]
        [--out FILE]

Runs `train.py app:apps/fashion_mnist/q_resnet20_adabits.yml` once per (seed, mode), the modes of a
seed one after another, each process alone and timed whole (start-up, clipping-level choice, 200 joint
steps, evaluation), with an empty Inductor cache of its own: a compiled mode pays its cold compile as a
fresh clone would. Reports each run's top-1 per bit-width and its gap to the fp32 run of the same seed.
`glibc_defaults` is fp32 with `ADABITS_KEEP_FREED_MEMORY=0` (glibc's allocator settings as they come): a
change of memory management only, so its weights are compared bit for bit with the fp32 run's.
`--baseline REV` adds the fp32 mode run from a git worktree of REV (the code before a change), first in
each seed's order.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..accuracy.main_job import STAGES, best_top1
from ..common import BadInput, exit_on_bad_input, full_command, report, run_logged

#: mode -> (config overrides, environment variables)
MODES: dict[str, tuple[list[str], dict[str, str]]] = {
    "fp32": ([], {}),
    "bf16": (["precision=bf16"], {}),
    "compile_quantizers": (["compile_quantizers=true"], {}),
    "glibc_defaults": ([], {"ADABITS_KEEP_FREED_MEMORY": "0"}),
}
BASELINE = "baseline"
ROOT = Path(__file__).resolve().parents[1]


def run_mode(mode: str, seed: int, fp_model: Path, work: Path, code: Path = ROOT) -> dict[str, Any]:
    """One stage-2 run of the checkout at `code`: its seconds and top-1 per bit-width."""
    name = f"{mode}_seed{seed}"
    cache = work / f"inductor_cache_{name}"
    overrides, env = MODES["fp32" if mode == BASELINE else mode]  # the baseline is fp32 of other code
    args = [sys.executable, "train.py", f"app:{STAGES['stage2']}", f"fp_pretrained_file={fp_model}",
            f"log_dir={work}", f"run_name={name}", f"random_seed={seed}", *overrides]
    try:
        seconds = run_logged("training.stage2_modes", args, code, work / f"{name}.log",
                             env={**os.environ, **env, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"mode": mode, "seed": seed, "seconds": seconds, "top1": best_top1(work / name / "metrics.jsonl")}


def same_weights(first: Path, second: Path) -> bool:
    """Whether two runs' best_model.pt hold the same model tensors, bit for bit."""
    a, b = (torch.load(path, map_location="cpu", weights_only=False)["model"] for path in (first, second))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def worktree(rev: str, work: Path) -> Path:
    """A git worktree of `rev` under `work` (the code a baseline runs)."""
    folder = work / f"code_{rev}"
    done = subprocess.run(["git", "worktree", "add", "--detach", "--force", str(folder), rev], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BadInput(f"--baseline {rev}: git worktree add failed ({done.stderr.strip().splitlines()[-1:]})")
    return folder


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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.stage2_modes", description=__doc__.splitlines()[0])
    parser.add_argument("--fp-model", type=Path, required=True, help="stage 1's best_model.pt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1995, 1996])
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "compile_quantizers"], choices=list(MODES))
    parser.add_argument("--baseline", help="a git revision whose fp32 stage 2 runs first (the code before a change)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adabits_stage2_modes"), help="run folders (emptied first)")
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args()
    if not args.fp_model.is_file():
        raise BadInput(f"--fp-model {args.fp_model} is not a file: pass stage 1's best_model.pt")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    code = worktree(args.baseline, args.work) if args.baseline else None
    runs = []
    try:
        for seed in args.seeds:
            if code:
                runs.append(run_mode(BASELINE, seed, args.fp_model.resolve(), args.work, code))
            runs += [run_mode(mode, seed, args.fp_model.resolve(), args.work) for mode in args.modes]
    finally:
        if code:
            subprocess.run(["git", "worktree", "remove", "--force", str(code)], cwd=ROOT, capture_output=True)
    for run in runs:
        if run["mode"] == "glibc_defaults" and "fp32" in args.modes:
            run["weights_equal_fp32"] = same_weights(args.work / f"glibc_defaults_seed{run['seed']}" / "best_model.pt",
                                                     args.work / f"fp32_seed{run['seed']}" / "best_model.pt")
    report({"command": full_command("training.stage2_modes", args),
            "what": "stage 2 of the main job per training mode from one float model, each run alone",
            "baseline": args.baseline, "fp_model": str(args.fp_model), "runs": runs,
            "top1_gap_to_fp32": gaps_to_fp32(runs)}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("training.stage2_modes"):
        main()
