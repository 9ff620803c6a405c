"""The run-time trade-off of one trained model where it is deployed: top-1 on held-out images, latency at
batch 1 and bits per weight at each bit-width, per runtime (`adabits.analysis.tradeoff`), and its plot.

The ONNX folder runs in ONNX Runtime and OpenVINO in this process; a `.pte` runs in ExecuTorch in a process
of its own (OpenVINO and ExecuTorch in one process crashed the test suite: docs/deploy.md). The plot (PNG)
is written beside the JSON. Export the model first (`adabits export ... --format onnx` / `--format pte`):

    python -m benchmarks.deploy.tradeoff --onnx runs/q_resnet20_adabits/onnx --pte runs/q_resnet20_adabits/model.pte
        [--runtimes onnxruntime openvino] [--test-images 10000] [--dataset fashion_mnist] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from adabits.analysis.tradeoff import held_out_images, measure_tradeoff, plot_tradeoff
from adabits.runtime import load

from ..common import BadInput, exit_on_bad_input, full_command, report


def _rows(path: str, runtimes: list[str | None], count: int, dataset: str) -> list[dict[str, Any]]:
    images, labels = held_out_images(count, load(path).uint8_input, dataset)
    return measure_tradeoff(path, images, labels, runtimes)


def _pte_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The .pte's rows, measured in a fresh process."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.deploy.tradeoff", "--pte", args.pte, "--pte-only",
                           "--test-images", str(args.test_images), "--dataset", args.dataset],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the .pte process failed: {done.stderr.strip().splitlines()[-1:]}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", help="an exported ONNX folder")
    parser.add_argument("--pte", help="an exported .pte file")
    parser.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"], help="for the ONNX folder")
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--pte-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.pte_only:
        print(json.dumps(_rows(args.pte, [None], args.test_images, args.dataset)))
        return
    if not args.onnx and not args.pte:
        raise BadInput("give --onnx FOLDER and/or --pte FILE (adabits export --format onnx | pte)")
    rows = _pte_rows(args) if args.pte else []
    if args.onnx:
        rows += _rows(args.onnx, args.runtimes, args.test_images, args.dataset)
    result = report({"command": full_command("deploy.tradeoff", args, leave_out=("pte_only",)), "rows": rows},
                    args.out)
    if args.out:
        plot_tradeoff(result["rows"], Path(args.out).with_suffix(".png"),
                      f"{result['machine']['cpu']}, batch 1")


if __name__ == "__main__":
    with exit_on_bad_input("deploy.tradeoff"):
        main()
