"""The README's main job from a fresh clone: the wall time of setup and of each stage, and the top-1 it prints.

    python -m benchmarks.accuracy.main_job --out benchmarks/results/accuracy/main_job_fresh_clone.json

Clones the committed HEAD of this checkout into --work (a folder it made before is removed first), then runs the README's first
command there one part at a time (setup, stage 1, stage 2), each timed alone. Nothing else should run
on the machine meanwhile: the times are the point. The top-1 is read from each stage's metrics.jsonl
(the epoch best_model.pt holds: the lowest mean top-1 error).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..common import BadInput, exit_on_bad_input, full_command, report, run_logged

SETUP = ["bash", "scripts/setup.sh"]
MARKER = ".main_job_clone"  # the one folder --work may remove: a clone this script made
STAGES = {"stage1": "apps/fashion_mnist/resnet20_fp.yml", "stage2": "apps/fashion_mnist/q_resnet20_adabits.yml"}


def best_top1(metrics: Path) -> dict[str, float]:
    """Top-1 (%) per bit-width at the epoch of the lowest mean top-1 error (the epoch best_model.pt holds)."""
    epochs: dict[int, dict[str, float]] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        epochs.setdefault(row["epoch"], {})[str(row["bits"])] = row["val_top1_error"]
    best = min(epochs.values(), key=lambda errors: sum(errors.values()) / len(errors))
    return {bits: round(100 * (1 - error), 2) for bits, error in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.main_job", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/adabits_main_job"), help="the fresh clone (removed first)")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    if commit.returncode != 0:
        raise BadInput(f"{repo} is not a git checkout: the main job runs from a fresh clone of its HEAD")
    if args.work.exists() and any(args.work.iterdir()):
        if not (args.work / MARKER).is_file():
            raise BadInput(f"--work {args.work} exists and is not a clone this script made (no {MARKER}); "
                           "name an empty or new folder")
        shutil.rmtree(args.work)
    subprocess.run(["git", "clone", "--quiet", str(repo), str(args.work)], check=True)
    (args.work / MARKER).write_text("made by python -m benchmarks.accuracy.main_job; removed by its next run\n")
    seconds = {"setup": run_logged("accuracy.main_job", SETUP, args.work, args.work / "setup.log")}
    python = str(args.work / ".venv" / "bin" / "python")
    top1: dict[str, Any] = {}
    for stage, config in STAGES.items():
        seconds[stage] = run_logged("accuracy.main_job", [python, "train.py", f"app:{config}"], args.work,
                                    args.work / f"{stage}.log")
        top1[stage] = best_top1(args.work / "runs" / Path(config).stem / "metrics.jsonl")
    result = {
        "command": full_command("accuracy.main_job", args),
        "what": f"the README's main job from a fresh clone of {commit.stdout.strip()}, each part timed alone",
        "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
        "top1": top1,
        "logs": str(args.work),
    }
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.main_job"):
        main()
