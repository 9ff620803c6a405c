"""How closely the ONNX Runtime export follows the PyTorch model of a trained run, per bit-width.

Takes a training config (and overrides) whose run holds a trained `best_model.pt`, exports it at
each requested bit-width with the same code as `adabits export --format onnx`, and compares
ONNX Runtime's logits with the fake-quant model's on the whole validation set: top-1 of both, the
share of images where their top-1 agrees, and the relative logit difference.

    python benchmarks/onnx_agreement.py app:apps/fashion_mnist/q_resnet20_adabits.yml --bits 6 5 4 \
        --out benchmarks/results/onnx_agreement_main_job.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import adabits
from adabits.data import build_splits
from adabits.engine import Trainer, load_config
from adabits.export.onnx import FloatWeightsWarning, export_onnx, run_onnx


def agreement(args: list[str], bits_list: list[int], batch: int = 500) -> dict[str, dict[str, float]]:
    cfg = load_config(args + ["test_only=true"]).config
    trainer = Trainer(cfg, echo=lambda _msg: None).prepare()
    model = trainer.model.eval()
    splits = build_splits(cfg)
    images, labels = splits.val_images, splits.val_labels.numpy()
    shape = tuple(images.shape[1:])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bits in bits_list:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FloatWeightsWarning)
                path = export_onnx(model, Path(tmp) / f"{bits}.onnx", bits, shape, uint8_input=not cfg.normalize)
            torch_logits, ort_logits = [], []
            for start in range(0, len(images), batch):
                x = images[start:start + batch]
                with torch.no_grad(), adabits.use_bits(model, bits):
                    torch_logits.append(model(x.float()).numpy())
                ort_logits.append(run_onnx(path, x))
            t, o = np.concatenate(torch_logits), np.concatenate(ort_logits)
            results[str(bits)] = {
                "pytorch_top1": round(100 * float((t.argmax(1) == labels).mean()), 2),
                "onnxruntime_top1": round(100 * float((o.argmax(1) == labels).mean()), 2),
                "top1_agreement": round(100 * float((t.argmax(1) == o.argmax(1)).mean()), 2),
                "relative_logit_difference": round(float(np.linalg.norm(o - t) / np.linalg.norm(t)), 5),
            }
            print(bits, results[str(bits)], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="+", help="app:PATH.yml [key=value ...], as for `adabits test`")
    parser.add_argument("--bits", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    results = agreement(opts.config, opts.bits)
    if opts.out:
        record = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
                  "validation_images": "the whole validation set", "results": results}
        opts.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
