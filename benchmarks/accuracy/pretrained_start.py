"""Float models trained in plain PyTorch, turned into one switchable {8,6,5,4}-bit model, against PTQ peers.

    python -m benchmarks.accuracy.pretrained_start [--models cnn,resnet20,vit] [--seed 0] [--steps 200]
        [--calibration-images 512] [--out benchmarks/results/accuracy/pretrained_start.json]

Issue 26 ("Start from any pretrained model"), item 4. For each model of `benchmarks/accuracy/plain_models.py`
(`PlainCNN`, `PlainResNet20`, `PlainViT`: torch.nn only, trained by `train_plain` with no adabits
involved; the state dict is cached in `--cache-dir` and reused), top-1 on the Fashion-MNIST test images
(all 10,000 by default) of:

- `float`: the float model itself;
- `converted`: `adabits.quantize_model(copy, bits_list=[8, 6, 5, 4])` with today's default config,
  no data seen, at each bit-width;
- `calibrated`: `adabits.quantize_model(copy, bits_list=[8, 6, 5, 4], calibration=batches)`, the same
  `--calibration-images` training images every peer calibrates on, at each bit-width, and the wall time
  of that call;
- `joint_steps`: the calibrated model after `--steps` joint steps (per step one batch of 128 training
  images and `adabits.joint_step`, the mean of the per-bit cross-entropies; then one SGD step, momentum
  0.9, lr 0.005 decaying to 0 on a cosine, no weight decay);
- peers, post-training quantization of the same float model on the same calibration images:
  ONNX Runtime's `quantize_static` (int8 QDQ, weights per channel; `benchmarks/deploy/runtime_peers.py`),
  ExecuTorch's XNNPACK int8 PT2E flow (same module), Brevitas PTQ at 8 and 4 bits (`brevitas_model`),
  torch.ao FX PTQ at 8 bits (x86 backend). A peer that cannot take a model records its error in its row;
  the Brevitas and torch.ao rows list the conv/linear/attention layers they left in float (`float_layers`).

Smoke-test size: `--models cnn --train-images 2048 --epochs 1 --steps 2 --calibration-images 64
--test-images 500 --cache-dir DIR` (tests/benchmarks/test_benchmark_pretrained_start.py). `--threads 1` beside
other work on a 2-core machine: two processes of two threads each slow both several times over.

Every row sees the same inputs: the uint8 images scaled to [0, 1] and normalised with Fashion-MNIST's
mean and std (`adabits.data.ToModelInput`). Reports each row per bit-width with its gap to the float
model, as JSON (with the command and the machine) and as a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import adabits
from adabits.analysis.evaluation import top1, top1_per_bits
from adabits.atomic import atomic_write
from adabits.data import TensorLoader, ToModelInput, build_splits
from adabits.engine.config import TrainConfig
from adabits.quant.convert import default_layer_policy

from ..common import BadInput, exit_on_bad_input, full_command, report
from ..deploy import runtime_peers
from .plain_models import Optimizer, PlainCNN, PlainResNet20, PlainViT, cosine_factor, train_plain
from .pretrained_start_tables import BITS, markdown

#: the bit-widths of the Brevitas peer: adabits' highest and lowest
BREVITAS_BITS = [8, 4]
#: the joint steps' batch and optimizer (issue 26: SGD, momentum 0.9, lr 0.005 cosine to 0, no weight decay)
JOINT_BATCH, JOINT_LR, JOINT_MOMENTUM = 128, 0.005, 0.9
TRAIN_BATCH, EVAL_BATCH = 128, 1000
#: images per forward while a peer calibrates (Brevitas, torch.ao; ORT and ExecuTorch chunk on their own)
CALIBRATION_CHUNK = 64
#: Brevitas activation ranges: the percentiles its PTQ example (brevitas_examples ptq_evaluate) defaults to
BREVITAS_PERCENTILE = 99.999
#: the float layers a peer may leave unquantized (exact types: Brevitas's layers subclass them)
FLOAT_LAYERS = (nn.Conv2d, nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear, nn.MultiheadAttention)


@dataclass(frozen=True)
class ModelSpec:
    """One float model and the plain recipe it is trained with."""

    build: Callable[[], nn.Module]
    epochs: int
    lr: float
    optimizer: Optimizer = "sgd"
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    #: NHWC convolutions (about 25 % faster on CPU); the transformer gains nothing from it
    channels_last: bool = True
    #: ORT's `quant_pre_process` (symbolic shape inference) fails on a transformer's reshapes
    ort_pre_process: bool = True

    def recipe(self) -> dict[str, Any]:
        """How the float model is trained, as JSON (the builder by its class name): what a cached model must match."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("build", "ort_pre_process")}
        return {"model": getattr(self.build, "__name__", repr(self.build)), **fields}


MODELS: dict[str, ModelSpec] = {
    "cnn": ModelSpec(PlainCNN, epochs=2, lr=0.1),
    "resnet20": ModelSpec(PlainResNet20, epochs=3, lr=0.1),
    "vit": ModelSpec(PlainViT, epochs=5, lr=2e-3, optimizer="adamw", weight_decay=0.05, warmup_epochs=0.5,
                     channels_last=False, ort_pre_process=False),
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    """The three image sets of a run, as model inputs (normalised floats): the shuffled, flipped training
    batches, the test batches, and the calibration images every calibrating row shares."""

    train: TensorLoader
    test: list[tuple[Tensor, Tensor]]
    calibration: Tensor
    train_images: int

    @property
    def test_images(self) -> int:
        return sum(len(labels) for _, labels in self.test)


def load_data(seed: int, train_images: int | None, test_images: int | None, calibration_images: int) -> Data:
    """Fashion-MNIST through adabits.data (Debian's package, or DataError saying how to get it).

    `train_images` / `test_images` keep the first that many of each split (None: all). The calibration
    images are a seeded draw of the kept training images, without augmentation."""
    splits = build_splits(TrainConfig(dataset="fashion_mnist"))
    to_input = ToModelInput(True, splits.mean, splits.std)
    images, labels = splits.train_images[:train_images], splits.train_labels[:train_images]
    if calibration_images > len(images):
        raise BadInput(f"--calibration-images {calibration_images} exceeds the {len(images)} training images")
    # the dataset's customary flip, no crop: a few epochs underfit already (apps/fashion_mnist/resnet20_fp.yml)
    train = TensorLoader(images, labels, TRAIN_BATCH, to_input, shuffle=True, random_flip=splits.random_flip,
                         seed=seed)
    test = list(TensorLoader(splits.val_images[:test_images], splits.val_labels[:test_images], EVAL_BATCH, to_input))
    draw = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:calibration_images]
    return Data(train, test, to_input(images[draw]), len(images))


def calibration_batches(calibration: Tensor, size: int = JOINT_BATCH) -> list[Tensor]:
    """The calibration images as the list of input batches `quantize_model(calibration=...)` takes."""
    return list(calibration.split(size))


def endless(loader: TensorLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """Training batches epoch after epoch (each epoch its own shuffle), for a loop counted in steps."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


# ---------------------------------------------------------------------------------------------- float model


def float_model(name: str, spec: ModelSpec, data: Data, seed: int, cache_dir: Path) -> tuple[nn.Module, dict]:
    """The trained float model of `name` in eval mode, and how it was trained.

    Trained by `train_plain` unless `cache_dir/<name>_seed<seed>.pt` holds it; a cached model trained with
    another recipe or on another number of images is refused (delete it or pass another --cache-dir)."""
    recipe = {**spec.recipe(), "seed": seed, "train_images": data.train_images, "batch_size": TRAIN_BATCH}
    path = cache_dir / f"{name}_seed{seed}.pt"
    torch.manual_seed(seed)
    model = spec.build()
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["recipe"] != recipe:
            raise BadInput(f"{path} holds a {name} trained with {cached['recipe']}, not {recipe}; delete it or "
                           "pass another --cache-dir")
        model.load_state_dict(cached["model"])
        _log(f"{name}: float model from {path}")
        return model.eval(), {**cached["train"], "cached": str(path)}
    _log(f"{name}: training the float model ({spec.epochs} epochs, {len(data.train)} steps each)")
    stats = train_plain(model, data.train, spec.epochs, spec.lr, spec.optimizer, spec.weight_decay,
                        warmup_steps=round(spec.warmup_epochs * len(data.train)))
    train = asdict(stats)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:  # a run stopped while saving leaves no half file to be reused
        torch.save({"model": model.state_dict(), "recipe": recipe, "train": train}, f)
    _log(f"{name}: trained in {stats.seconds} s, saved to {path}")
    return model.eval(), {**train, "cached": None}


# ---------------------------------------------------------------------------------------------- adabits rows


def converted(model: nn.Module, channels_last: bool, **kwargs: Any) -> tuple[nn.Module, float, list[str]]:
    """`adabits.quantize_model` of a copy of `model` over BITS: the switchable model, the seconds the call
    took, and the warnings it gave (a float path it left, for instance)."""
    twin = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        switchable = adabits.quantize_model(twin, bits_list=BITS, **kwargs)
        seconds = time.perf_counter() - start
    if channels_last:
        switchable = switchable.to(memory_format=torch.channels_last)
    return switchable, round(seconds, 2), list(dict.fromkeys(str(w.message) for w in caught))


def joint_steps(model: nn.Module, batches: Iterator[tuple[Tensor, Tensor]], steps: int) -> float:
    """`steps` joint steps of every bit-width in BITS, in place: per step one batch, `adabits.joint_step` (the
    mean of the per-bit cross-entropies), then one SGD step (lr JOINT_LR on a cosine to 0 over `steps`).
    Returns the seconds they took; the model is left in eval mode at the highest bit-width."""
    opt = torch.optim.SGD(model.parameters(), lr=JOINT_LR, momentum=JOINT_MOMENTUM, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, steps))
    model.train()
    start = time.perf_counter()
    for images, labels in itertools.islice(batches, steps):
        opt.zero_grad(set_to_none=True)
        adabits.joint_step(model, images, labels, bits=BITS, joint_loss="mean")
        opt.step()
        schedule.step()
    adabits.set_bits(model, BITS[0])
    model.eval()
    return round(time.perf_counter() - start, 1)


# ---------------------------------------------------------------------------------------------- peers


def _logits_top1(logits: Callable[[Tensor], Any], test: list[tuple[Tensor, Tensor]], chunk: int | None = None) -> float:
    """Top-1 (percent) of a runtime's `logits(images)` over the test batches, fed `chunk` images at a time."""
    correct = total = 0
    for images, labels in test:
        for part, part_labels in zip(images.split(chunk or len(images)), labels.split(chunk or len(labels))):
            predicted = torch.as_tensor(np.asarray(logits(part.contiguous()))).argmax(1)
            correct += int((predicted == part_labels).sum())
            total += len(part_labels)
    return 100.0 * correct / total


def float_layers(model: nn.Module) -> list[str]:
    """The conv, linear and attention layers `model` still computes in float (an attention's out_proj counted
    with it): what a peer left out of its quantization."""
    names = [n for n, m in model.named_modules() if type(m) in FLOAT_LAYERS]
    attention = [f"{n}." for n in names if isinstance(model.get_submodule(n), nn.MultiheadAttention)]
    return [n for n in names if not any(n.startswith(prefix) for prefix in attention)]


def ort_int8_top1(model: nn.Module, data: Data, pre_process: bool) -> dict[str, Any]:
    """ONNX Runtime's own static int8 quantization (QDQ, weights per channel) of the float model."""
    from adabits.export.onnx_session import session_logits

    with tempfile.TemporaryDirectory(prefix="adabits_pretrained_start_") as tmp:
        example = data.calibration[:1].contiguous()
        float_onnx = runtime_peers.export_float_onnx(model, example, Path(tmp) / "float.onnx")
        session = runtime_peers.ort_int8_peer(float_onnx, data.calibration, Path(tmp) / "int8.onnx",
                                              pre_process=pre_process)
        return {"top1": _logits_top1(lambda x: session_logits(session, x), data.test)}


def executorch_int8_top1(model: nn.Module, data: Data) -> dict[str, Any]:
    """ExecuTorch's own int8 PT2E quantization (XNNPACKQuantizer, weights per channel), lowered to XNNPACK."""
    example = data.calibration[:1].contiguous()
    program = runtime_peers.pte_int8_peer(model, example, data.calibration)
    runner = runtime_peers.PteRunner(program)
    return {"top1": _logits_top1(runner.run, data.test, chunk=runtime_peers.MAX_BATCH)}


def brevitas_model(model: nn.Module, bits: int) -> nn.Module:
    """Brevitas's layerwise PTQ of a copy of `model`: every Conv2d, Linear and MultiheadAttention becomes
    its Brevitas twin with `bits`-bit weights (symmetric, per output channel, scale from max |w|) and
    `bits`-bit inputs (asymmetric per tensor, range from the 99.999th percentiles), the quantizers of
    Brevitas's own PTQ example (`create_quant_maps`). The first layer and the classifier follow adabits'
    default policy (`default_layer_policy`): weights at 8 bits at least, the first layer's input too.
    BN, LayerNorm and residual adds stay float, as in adabits."""
    from brevitas.graph.quantize import layerwise_quantize
    from brevitas_examples.imagenet_classification.ptq.ptq_common import create_quant_maps

    def layer_map(weight_bits: int, input_bits: int) -> dict:
        return create_quant_maps(
            dtype=torch.float32, bias_bit_width=32, weight_bit_width=weight_bits, weight_param_method="stats",
            weight_scale_type="float_scale", weight_quant_type="sym", weight_quant_granularity="per_channel",
            weight_narrow_range=False, weight_quant_format="int", act_quant_format="int", act_bit_width=input_bits,
            act_scale_type="float_scale", act_scale_computation_type="static", act_param_method="stats",
            act_quant_type="asym", act_quant_granularity="per_tensor", act_quant_percentile=BREVITAS_PERCENTILE)[1]

    quantized = copy.deepcopy(model).eval()
    policy = default_layer_policy(quantized, BITS)
    quantized = layerwise_quantize(quantized, compute_layer_map=layer_map(bits, bits), name_blacklist=list(policy))
    # one pass per edge layer; a pass replaces only layers still float (Brevitas matches exact classes)
    for name, options in policy.items():
        widths = max(bits, options.get("bitw_min", bits)), max(bits, options.get("bita_min", bits))
        quantized = layerwise_quantize(quantized, compute_layer_map=layer_map(*widths),
                                       name_blacklist=[other for other in policy if other != name])
    return quantized


def brevitas_top1(model: nn.Module, data: Data, bits: int) -> dict[str, Any]:
    """Top-1 of `brevitas_model` after Brevitas's calibration pass over the calibration images."""
    from brevitas.graph.calibrate import calibration_mode

    quantized = brevitas_model(model, bits)
    with torch.no_grad(), calibration_mode(quantized):
        for chunk in data.calibration.split(CALIBRATION_CHUNK):
            quantized(chunk)
    return {"top1": top1(quantized.eval(), data.test), "float_layers": float_layers(quantized)}


def torch_ao_int8_top1(model: nn.Module, data: Data) -> dict[str, Any]:
    """torch.ao's FX post-training quantization (default x86 qconfig: int8 weights per channel, uint8
    activations, BN folded), calibrated on the calibration images, converted to int8 kernels. FX traces
    torch.nn's own modules as leaves, so a whole nn.TransformerEncoderLayer stays float: `float_layers`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    example = (data.calibration[:1],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice, once per call
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), example)
        with torch.no_grad():
            for chunk in data.calibration.split(CALIBRATION_CHUNK):
                prepared(chunk)
        int8 = convert_fx(prepared)
        return {"top1": top1(int8, data.test), "float_layers": float_layers(int8)}


def error_text(exc: BaseException, limit: int = 2000) -> str:
    """`Type: message (at file:line)`, the line where it was raised: a bare assert says nothing otherwise."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}".strip()[:limit] + where


@contextmanager
def without_transformer_fast_path() -> Iterator[None]:
    """Turn off the fused inference kernel of torch's transformer layers (`torch.backends.mha`, a process-wide
    switch, restored on exit). In eval mode it replaces a whole encoder layer by one op that neither the ONNX
    exporter nor a quantization library sees into; adabits' conversion turns it off on its own model alike."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def peer_row(label: str, bits: int, run: Callable[[], dict[str, Any]], notes: str) -> dict[str, Any]:
    """A peer's row: its top-1 at `bits` (from `run`'s "top1", with what else it reports) and its seconds
    (export, calibration and evaluation), or the error that stopped it."""
    _log(f"  peer {label}")
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), without_transformer_fast_path():
            warnings.simplefilter("ignore", FutureWarning)  # the exporters' deprecation notices, many per call
            measured = run()
        row: dict[str, Any] = {**measured, "top1": {str(bits): round(measured["top1"], 2)}}
    except Exception as exc:  # a peer library refusing a model is a result, not a failed benchmark
        row = {"top1": {}, "error": error_text(exc)}
    return {**row, "seconds": round(time.perf_counter() - start, 1), "notes": notes}


def peer_rows(model: nn.Module, spec: ModelSpec, data: Data) -> dict[str, dict[str, Any]]:
    """Every peer of one float model, each calibrated on `data.calibration`.

    Each starts from a copy in eval mode and torch's default (NCHW) layout, the model as a user hands it to
    an exporter: XNNPACK's layout pass refuses channels-last weights."""
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    n = len(data.calibration)
    rows = {
        "ort_int8": peer_row("ONNX Runtime int8", 8, lambda: ort_int8_top1(model, data, spec.ort_pre_process),
                             f"onnxruntime {version('onnxruntime')} quantize_static: QDQ, int8 weights per channel, "
                             f"uint8 activations per tensor (MinMax on {n} images)"
                             + ("" if spec.ort_pre_process else "; without quant_pre_process, which fails on "
                                                                "a transformer's reshapes")),
        "executorch_int8": peer_row("ExecuTorch XNNPACK int8", 8, lambda: executorch_int8_top1(model, data),
                                    f"executorch {version('executorch')} PT2E, XNNPACKQuantizer symmetric per-channel "
                                    f"int8 weights, int8 activations per tensor ({n} images), lowered to XNNPACK"),
    }
    for bits in BREVITAS_BITS:
        rows[f"brevitas_w{bits}a{bits}"] = peer_row(
            f"Brevitas w{bits}a{bits}", bits, lambda bits=bits: brevitas_top1(model, data, bits),
            f"brevitas {version('brevitas')} layerwise PTQ: {bits}-bit weights (per channel, max |w|) and inputs "
            f"(asymmetric per tensor, {BREVITAS_PERCENTILE} percentiles, calibration_mode on {n} images) of every "
            "conv, linear and attention; as adabits' policy, the first layer's weights and input and the "
            "classifier's weights at 8 bits at least; norms and adds in float")
    rows["torch_ao_int8"] = peer_row("torch.ao FX int8", 8, lambda: torch_ao_int8_top1(model, data),
                                     f"torch {torch.__version__} prepare_fx/convert_fx, default x86 qconfig (int8 "
                                     f"weights per channel, uint8 activations, BN folded), {n} calibration images")
    return rows


# ---------------------------------------------------------------------------------------------- one model


def gaps(top1s: dict[str, float], reference: float) -> dict[str, float]:
    """Each bit-width's top-1 minus the float model's (points)."""
    return {bits: round(value - reference, 2) for bits, value in top1s.items()}


def bench_model(name: str, spec: ModelSpec, data: Data, args: argparse.Namespace) -> dict[str, Any]:
    """Every row of one model: the float model, adabits' three rows and the peers."""
    model, training = float_model(name, spec, data, args.seed, args.cache_dir)
    float_top1 = round(top1(model, data.test), 2)
    _log(f"{name}: float top-1 {float_top1}")
    rows: dict[str, dict[str, Any]] = {"float": {"top1": {"float": float_top1}}}

    plain, seconds, conversion_warnings = converted(model, spec.channels_last)
    rows["converted"] = {"top1": _per_bits(plain, data), "seconds": seconds,
                         "notes": "quantize_model(bits_list=[8, 6, 5, 4]), default config, no data"}
    _log(f"{name}: converted {rows['converted']['top1']}")

    batches = calibration_batches(data.calibration)
    calibrated, seconds, calibration_warnings = converted(model, spec.channels_last, calibration=batches)
    rows["calibrated"] = {"top1": _per_bits(calibrated, data), "seconds": seconds,
                          "notes": f"quantize_model(bits_list=[8, 6, 5, 4], calibration=) on {len(data.calibration)} "
                                   "training images; seconds: that call"}
    _log(f"{name}: calibrated in {seconds} s {rows['calibrated']['top1']}")

    torch.manual_seed(args.seed)
    seconds = joint_steps(calibrated, endless(data.train), args.steps)
    rows["joint_steps"] = {"top1": _per_bits(calibrated, data), "seconds": seconds,
                           "notes": f"{args.steps} joint steps from the calibrated model: batch {JOINT_BATCH}, "
                                    f"SGD momentum {JOINT_MOMENTUM}, lr {JOINT_LR} cosine to 0, no weight decay"}
    _log(f"{name}: after {args.steps} joint steps ({seconds} s) {rows['joint_steps']['top1']}")

    rows.update(peer_rows(model, spec, data))
    for row in rows.values():
        row["gap_to_float"] = gaps(row["top1"], float_top1)
    return {"recipe": spec.recipe(), "float_training": training,
            "parameters": sum(p.numel() for p in model.parameters()),
            "conversion_warnings": list(dict.fromkeys(conversion_warnings + calibration_warnings)), "rows": rows}


def _per_bits(model: nn.Module, data: Data) -> dict[str, float]:
    return {str(bits): value for bits, value in top1_per_bits(model, data.test, BITS).items()}


# ---------------------------------------------------------------------------------------------- report


def parse_models(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise BadInput(f"--models {text!r}: unknown {unknown or 'none given'}; allowed: {', '.join(MODELS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.pretrained_start", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200, help="joint steps after calibration")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--train-images", type=int, help="train on the first N training images (default: all 60,000)")
    parser.add_argument("--test-images", type=int, help="test on the first N test images (default: all 10,000)")
    parser.add_argument("--epochs", type=int, help="float training epochs of every model (default: each model's own)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/pretrained_start"),
                        help="trained float models, reused when present")
    parser.add_argument("--out", help="results JSON (and the markdown table beside it, .md)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    names = parse_models(args.models)
    for option in ("steps", "calibration_images", "train_images", "test_images", "epochs", "threads"):
        value = getattr(args, option)
        least = 0 if option == "steps" else 1
        if value is not None and value < least:
            raise BadInput(f"--{option.replace('_', '-')} must be at least {least}, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = {name: replace(MODELS[name], epochs=args.epochs) if args.epochs else MODELS[name] for name in names}
    data = load_data(args.seed, args.train_images, args.test_images, args.calibration_images)
    models: dict[str, Any] = {}
    result = {"command": full_command("accuracy.pretrained_start", args),
              "what": "float models trained in plain PyTorch, converted to one {8,6,5,4}-bit adabits model "
                      "(no calibration, calibrated, joint steps) against post-training quantization peers",
              "settings": {"bits": BITS, "steps": args.steps, "calibration_images": args.calibration_images,
                           "train_images": data.train_images, "test_images": data.test_images, "seed": args.seed,
                           "inputs": "uint8 / 255, normalised with Fashion-MNIST's mean and std"},
              "models": models}
    for name, spec in specs.items():
        models[name] = bench_model(name, spec, data, args)
        if args.out and len(models) < len(specs):
            report(result, args.out, echo=False)  # a run stopped later keeps the models it finished
    text = markdown(result)
    full = report(result, args.out)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text)
    return full


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.pretrained_start"):
        main()
