"""How closely the ONNX Runtime export follows the PyTorch model of a trained run, per bit-width.

Takes a training config (and overrides) whose run holds a trained `best_model.pt` and runs the
deploy benchmark's comparison (`deploy.accuracy_vs_onnx`) on it: each requested bit-width is
exported as `adabits export --format onnx [graph=...]` does, and ONNX Runtime's top-1 is compared
with the fake-quant model's on the whole validation set.

    python -m benchmarks.deploy.onnx_agreement app:apps/fashion_mnist/q_resnet20_adabits.yml --bits 8 6 5 4 \
        --graph integer qdq --out benchmarks/results/deploy/onnx_agreement_main_job.json

(The committed `results/deploy/onnx_agreement_main_job_lr0.02.json` was measured with `--bias`, the modes of the
retired `graph=mixed` exporter.)
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from adabits.engine import load_config
from adabits.engine.deploy import ONNX_GRAPHS

from ..common import command, exit_on_bad_input, report
from .deploy import accuracy_vs_onnx, load_for_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy.onnx_agreement", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="+", help="app:PATH.yml [key=value ...], as for `adabits test`")
    parser.add_argument("--bits", type=int, nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--graph", nargs="+", default=["integer"], choices=ONNX_GRAPHS,
                        help="export each of these graph forms (adabits export ... graph=GRAPH)")
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    loaded = load_for_evaluation(load_config(opts.config).config)
    with tempfile.TemporaryDirectory() as tmp:
        results = {graph: accuracy_vs_onnx(loaded, Path(tmp), opts.bits, opts.threads, graph) for graph in opts.graph}
    report({"command": command("deploy.onnx_agreement"), "validation_images": loaded.val.num_samples, "results": results}, opts.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.onnx_agreement"):
        main()
