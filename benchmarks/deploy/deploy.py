"""Deployment: ONNX Runtime latency vs float, export accuracy, calibrated bit-widths, packed size.

1. Model: ResNet-20 on Fashion-MNIST, `modified` weights (int8-exportable), bits [8, 6, 5, 4].
   Without --checkpoint it is made here: a float model trained for --fp-epochs, then --joint-steps
   of joint AdaBits fine-tuning from it (the main job's recipe, shortened).
2. Accuracy on the 10,000 test images: the PyTorch fake-quant model vs its ONNX export in ONNX
   Runtime at every bit-width (top-1 of each, and how often their top-1 agree), written by
   `adabits.export_model` as `adabits export` writes it (--graph: the all-integer graph, calibrated
   on 512 training images, or the quantize/dequantize one).
3. Calibrated bit-widths (adabits.calibrate_bn, --calib-batches training batches): 7 and 3 bits,
   reported next to the trained ones.
4. Packed file size vs the float32 state dict vs (highest bits / 32) of it.
5. Latency, one process, variants interleaved round by round, medians: ORT all-integer graphs at 8
   and 4 bits, the quantize/dequantize graph at 4 bits (float kernels on the codes, float bias), ORT
   float32 (the same architecture exported at 32 bits), PyTorch eager float32; batch 1 and 64;
   ResNet-20 on 1x28x28 and MobileNet V2 on 3x224x224 (when registered, random weights: latency does
   not depend on the values).

    python -m benchmarks.deploy.deploy [--checkpoint PATH] [--skip ...] [--out benchmarks/results/deploy/deploy.json]
    (or in parts that each fit a short slot: --train-only --save-checkpoint PATH, then
    --checkpoint PATH --skip latency, then --skip accuracy calibration packed)
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import adabits
from adabits.analysis.evaluation import evaluate_meters as evaluate
from adabits.data import BatchLoader, DataShape, build_loader
from adabits.engine import TrainConfig, Trainer, build_config, load_trained
from adabits.engine.build import model_kwargs
from adabits.engine.deploy import calibration_images
from adabits.export.onnx_session import cpu_session, optimized_op_counts, session_logits
from adabits.export.packed import save_packed

from ..common import command, exit_on_bad_input, report, time_interleaved

BITS = [8, 6, 5, 4]
CALIBRATED = [7, 3]
CALIBRATION_IMAGES = 512  # as `adabits export` calibrates the all-integer graph


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_config(log_dir: Path, **changes: Any) -> dict[str, Any]:
    return {"model": "resnet20", "dataset": "fashion_mnist", "batch_size": 128, "crop_padding": 0,
            "rescale": True, "rescale_conv": True, "lr_scheduler": "cos_annealing_iter", "log_dir": str(log_dir),
            "eval_batch_size": 1000, "progress": False, **changes}


def train_model(work: Path, fp_epochs: int, joint_steps: int) -> Path:
    """Float stage, then joint AdaBits fine-tuning at BITS with `modified` weights; returns best_model.pt."""
    fp = Trainer(build_config(base_config(work, run_name="fp", bits_list=[32], lr=0.1, num_epochs=fp_epochs)),
                 echo=_log).prepare()
    fp.fit()
    joint = Trainer(build_config(base_config(
        work, run_name="joint", bits_list=BITS, weight_quant_scheme="modified", lr=0.02, num_epochs=1,
        max_iters_per_epoch=joint_steps, fp_pretrained_file=str(fp.run_dir / "best_model.pt"))), echo=_log).prepare()
    joint.fit()
    return joint.run_dir / "best_model.pt"


@dataclass
class Evaluated:
    """A trained model (`adabits.engine.load_trained`) with the validation loader its report reads."""

    cfg: TrainConfig
    model: nn.Module
    shape: DataShape
    val: BatchLoader


def load_for_evaluation(cfg: TrainConfig) -> Evaluated:
    """The config's trained weights and its validation split: no Trainer, no optimizer, no training set."""
    trained = load_trained(cfg)
    val, _ = build_loader(cfg, "val")
    return Evaluated(cfg, trained.model, trained.shape, val)


def load_checkpoint(work: Path, checkpoint: Path) -> Evaluated:
    cfg = build_config(base_config(work, run_name="eval", bits_list=BITS, weight_quant_scheme="modified",
                                   pretrained_file=str(checkpoint)))
    return load_for_evaluation(cfg)


@torch.no_grad()
def accuracy_vs_onnx(loaded: Evaluated, work: Path, bits_list: list[int], threads: int,
                     graph: str = "integer") -> dict[str, Any]:
    """Top-1 of the fake-quant model and of its ONNX export (`graph`: "integer" or "qdq") at each bit-width,
    and their agreement."""
    model, cfg, shape = loaded.model.eval(), loaded.cfg, loaded.shape
    images = calibration_images(cfg, CALIBRATION_IMAGES) if graph == "integer" else None
    rows = {}
    for bits in bits_list:
        path = adabits.export_model(model, work / f"{cfg.model}_{bits}bit.onnx", format="onnx", bits=bits,
                                    example=(shape.in_chans, shape.image_size, shape.image_size), calibration=images,
                                    graph=graph, uint8_input=not cfg.normalize).path
        session = cpu_session(path, threads)
        hits_torch = hits_onnx = agree = total = 0
        worst = 0.0
        for images, labels in loaded.val:
            with adabits.use_bits(model, bits):
                expected = model(images).numpy()
            got = session_logits(session, images)  # uint8 codes of the raw images, or the normalised floats
            hits_torch += int((expected.argmax(1) == labels.numpy()).sum())
            hits_onnx += int((got.argmax(1) == labels.numpy()).sum())
            agree += int((got.argmax(1) == expected.argmax(1)).sum())
            worst = max(worst, float(np.abs(got - expected).max()))
            total += len(labels)
        ops = optimized_op_counts(path)
        rows[str(bits)] = {"top1_pytorch": round(100 * hits_torch / total, 2), "top1_onnx": round(100 * hits_onnx / total, 2),
                           "top1_agreement": round(100 * agree / total, 2), "max_abs_logit_diff": round(worst, 4),
                           "ort_integer_ops": {k: v for k, v in ops.items() if k.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger"))},
                           "ort_float_convs": ops.get("Conv", 0) + ops.get("FusedConv", 0)}
        _log(f"{bits} bits: {rows[str(bits)]}")
    return rows


def calibration_report(loaded: Evaluated, batches: int, eval_images: int) -> dict[str, Any]:
    """Accuracy at the calibrated bit-widths next to the trained ones (first `eval_images` test images)."""
    model = loaded.model
    train, _ = build_loader(loaded.cfg, "train")
    for bits in CALIBRATED:
        adabits.calibrate_bn(model, bits, train, num_batches=batches)
    val_loader = loaded.val
    subset = dataclasses.replace(val_loader, images=val_loader.images[:eval_images],
                                 labels=val_loader.labels[:eval_images])
    val = evaluate(model, subset, adabits.get_bits_list(model), loaded.cfg.topk).summary()
    return {"num_batches": batches, "test_images": min(eval_images, val_loader.num_samples),
            "top1": {str(b): round(100 * (1 - v["top1_error"]), 2) for b, v in val.items()},
            "trained": BITS, "calibrated": CALIBRATED}


def packed_report(loaded: Evaluated, work: Path) -> dict[str, Any]:
    model = loaded.model
    path = work / "resnet20.safetensors"
    kwargs = model_kwargs(loaded.cfg, loaded.shape.num_classes, loaded.shape.in_chans)
    save_packed(model, path, model_name="resnet20", model_kwargs=kwargs)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    top = max(BITS)
    return {"packed_bytes": path.stat().st_size, "float32_state_dict_bytes": buffer.tell(),
            f"float32_x_{top}_over_32_bytes": buffer.tell() * top // 32,
            "bit_widths_in_file": adabits.get_bits_list(model),
            "note": "the float32 state dict holds the float weights and one BN (and alpha) per bit-width"}


def latency(name: str, input_shape: tuple[int, int, int], num_classes: int, batches: list[int], rounds: int,
            threads: int, work: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Median seconds per batch of each variant, interleaved round by round."""
    torch.manual_seed(0)
    quant = adabits.create_model(name, bits_list=[8, 4], num_classes=num_classes, in_chans=input_shape[0],
                                 weight_quant_scheme="modified", **options).eval()
    fp = adabits.create_model(name, bits_list=[32], num_classes=num_classes, in_chans=input_shape[0], **options).eval()
    calibration = torch.randint(0, 256, (64, *input_shape)).float()

    def onnx(model: nn.Module, file: str, bits: int, graph: str = "integer") -> Path:
        return adabits.export_model(model, work / file, format="onnx", bits=bits, example=input_shape,
                                    calibration=calibration if graph == "integer" else None,
                                    graph=graph, uint8_input=True).path

    paths = {"ort_int8_8bit": onnx(quant, f"{name}_8.onnx", 8), "ort_int8_4bit": onnx(quant, f"{name}_4.onnx", 4),
             "ort_qdq_4bit": onnx(quant, f"{name}_4_qdq.onnx", 4, "qdq"),
             "ort_float32": onnx(fp, f"{name}_fp.onnx", 32, "qdq")}
    sessions = {k: cpu_session(p, threads) for k, p in paths.items()}
    out: dict[str, Any] = {"ort_integer_ops_8bit": dict(optimized_op_counts(paths["ort_int8_8bit"]))}
    for batch in batches:
        images = torch.randint(0, 256, (batch, *input_shape), dtype=torch.uint8)
        feeds = {k: images.numpy() if k.startswith("ort_int8") else images.float().numpy() for k in sessions}
        x = images.float()
        variants: dict[str, Callable[[], object]] = {
            k: (lambda s=s, f=feeds[k]: s.run(None, {"input": f})) for k, s in sessions.items()}

        def eager(x: torch.Tensor = x) -> object:
            with torch.no_grad():
                return fp(x)

        variants["pytorch_eager_float32"] = eager
        for run in variants.values():  # warm-up
            run()
            run()
        times = time_interleaved(variants, rounds)
        median = {k: statistics.median(v) for k, v in times.items()}
        out[f"batch_{batch}"] = {
            "median_s": {k: round(v, 5) for k, v in median.items()},
            "speedup_vs_ort_float32": {k: round(median["ort_float32"] / v, 2) for k, v in median.items()},
            "speedup_vs_pytorch_eager_float32": {k: round(median["pytorch_eager_float32"] / v, 2) for k, v in median.items()},
        }
        _log(f"{name} batch {batch}: {out[f'batch_{batch}']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deploy.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a trained ResNet-20 [8,6,5,4] `modified` checkpoint (else train one)")
    parser.add_argument("--save-checkpoint", help="keep the checkpoint trained here at this path")
    parser.add_argument("--train-only", action="store_true", help="train, save to --save-checkpoint, stop")
    parser.add_argument("--fp-epochs", type=int, default=1)
    parser.add_argument("--joint-steps", type=int, default=60)
    parser.add_argument("--calib-batches", type=int, default=50)
    parser.add_argument("--calib-eval-images", type=int, default=10_000, help="test images for the calibration report")
    parser.add_argument("--accuracy-bits", type=int, nargs="+", default=BITS)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--mobilenet-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", nargs="*", default=[], choices=["accuracy", "calibration", "packed", "latency"])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    result: dict[str, Any] = {"command": command("deploy.deploy"), "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        need_model = {"accuracy", "calibration", "packed"} - set(args.skip)
        if need_model:
            checkpoint = Path(args.checkpoint) if args.checkpoint else train_model(work, args.fp_epochs, args.joint_steps)
            if args.save_checkpoint and not args.checkpoint:
                Path(args.save_checkpoint).write_bytes(checkpoint.read_bytes())
            if args.train_only:
                return
            result["model"] = {"checkpoint": args.checkpoint or f"trained here: {args.fp_epochs} float epoch(s), "
                                                              f"{args.joint_steps} joint steps at {BITS}"}
            loaded = load_checkpoint(work, checkpoint)
            if "accuracy" not in args.skip:
                result["accuracy_pytorch_vs_onnx"] = accuracy_vs_onnx(loaded, work, args.accuracy_bits, args.threads)
            if "calibration" not in args.skip:
                result["calibration"] = calibration_report(loaded, args.calib_batches, args.calib_eval_images)
            if "packed" not in args.skip:
                result["packed_size"] = packed_report(loaded, work)
        if "latency" not in args.skip:
            result["latency"] = {"resnet20_1x28x28": latency(
                "resnet20", (1, 28, 28), 10, [1, 64], args.rounds, args.threads, work, {"rescale_conv": True})}
            if "mobilenet_v2" in adabits.list_models():
                result["latency"]["mobilenet_v2_3x224x224"] = latency(
                    "mobilenet_v2", (3, 224, 224), 1000, [1, 64], args.mobilenet_rounds, args.threads, work, {})
            else:
                result["latency"]["mobilenet_v2_3x224x224"] = "not measured: mobilenet_v2 is not registered in this checkout"
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.deploy"):
        main()
