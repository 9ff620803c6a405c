"""Peers of our individually trained rows: the same ResNet-20, data and recipe, quantized by other libraries.

    python -m benchmarks.training.peers app:apps/fashion_mnist/q_resnet20_adabits.yml bits_list=[4] \
        fp_pretrained_file=runs/resnet20_fp/best_model.pt --kind brevitas_w4a4 [--out FILE]

Both peers start from a plain float ResNet-20 whose forward equals our SAT float model at 32 bits
(`float_twin`: each layer's effective weight, tanh-normalised and SAT-rescaled, becomes an ordinary
weight, by adabits.quant.float_twin.plain_layer), so they begin where our stage 2 begins. Then:

- `brevitas_w4a4`: Brevitas's standard integer quantizers, 4-bit weights (Int8WeightPerTensorFloat,
  bit_width 4, scale a learned parameter initialised from max|W|) and 4-bit inputs of every conv and
  linear (Uint8ActPerTensorFloat, bit_width 4, learned scale initialised from runtime percentiles).
  It quantizes exactly the tensors ours quantizes: the first conv keeps our stem's weight bits and
  never quantizes the images, the classifier keeps our classifier's weight bits, BN and the residual
  adds stay in float, as in ours.
- `torch_ao_qat8`: PyTorch's FX quantization-aware training (prepare_qat_fx, default x86 QAT qconfig:
  8-bit weights per channel, 8-bit activations with reduce_range, conv+BN(+ReLU) folded, every
  activation including the images quantized), then convert_fx to a real int8 model.

Both train with our Trainer's recipe: build_optimizer / build_scheduler of the config, cross-entropy
with its label smoothing, num_epochs x min(len(train), max_iters_per_epoch) steps, seed random_seed,
eager mode; top-1 on the whole validation set.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from importlib.metadata import version

import torch
from torch import Tensor, nn

import adabits
from adabits.analysis.evaluation import top1
from adabits.data import Loaders, build_loaders
from adabits.engine import load_config
from adabits.engine.build import build_model, load_pretrained
from adabits.engine.config import TrainConfig
from adabits.engine.optim import build_optimizer, build_scheduler
from adabits.models.resnet_cifar import BasicBlock, CifarResNet
from adabits.quant.float_twin import plain_layer

from ..common import BadInput, command, exit_on_bad_input, report

#: peer kind -> the bit-width of our row it stands next to
KIND_BITS = {"brevitas_w4a4": 4, "torch_ao_qat8": 8}
#: steps during which Brevitas collects activation statistics before its scales become parameters
#: (its default, 300, exceeds the whole short schedule of the main job)
BREVITAS_STATS_STEPS = 30


def check_kind(kind: str) -> int:
    """The bit-width of `kind`, or a BadInput (a ValueError) naming the allowed kinds."""
    if kind not in KIND_BITS:
        raise BadInput(f"unknown peer kind {kind!r}; allowed: {', '.join(KIND_BITS)}")
    return KIND_BITS[kind]


# ------------------------------------------------------------------ the float twin
# adabits.quant.float_twin.float_twin keeps the model's own modules, where one ReLU serves both uses
# in a block; FX fuses conv + BN + ReLU only with one ReLU module per use, hence this structure.
class FloatBasicBlock(nn.Module):
    """Our BasicBlock with ordinary layers (the ReLUs separate modules, so that FX can fuse them)."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = plain_layer(block.conv1), plain_layer(block.bn1), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = plain_layer(block.conv2), plain_layer(block.bn2), nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if isinstance(block.shortcut, nn.Sequential):
            self.shortcut = nn.Sequential(plain_layer(block.shortcut[0]), plain_layer(block.shortcut[1]))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class FloatResNet(nn.Module):
    """A plain float copy of our CIFAR ResNet at its current bit-width (32: our float model).

    Takes float images as the loaders hand them (0..255, or normalised with `normalize: true`)."""

    def __init__(self, model: CifarResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = plain_layer(model.conv1), plain_layer(model.bn1), nn.ReLU()
        self.layers = nn.Sequential(*(FloatBasicBlock(block) for block in model.layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = plain_layer(model.fc)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layers(x)).flatten(1))


def our_float_model(cfg: TrainConfig, num_classes: int, in_chans: int) -> CifarResNet:
    """Our model at 32 bits with cfg.fp_pretrained_file loaded: the starting point of stage 2."""
    float_cfg = cfg.model_copy(update={"bits_list": [32], "adaptive_training": False, "quantize_residual": False})
    model = build_model(float_cfg, num_classes, in_chans)
    if not isinstance(model, CifarResNet):
        raise BadInput(f"peers support the CIFAR ResNets (resnet20, ...), not model {cfg.model}")
    load_pretrained(model, float_cfg)
    return model.eval()


def float_twin(model: CifarResNet) -> FloatResNet:
    """A float network whose forward equals `model`'s (at its current bit-width, with weights frozen in)."""
    with torch.no_grad():
        return FloatResNet(model).train(model.training)


def edge_bits(cfg: TrainConfig, num_classes: int, in_chans: int) -> tuple[int, int]:
    """(first conv, classifier) weight bits of our model at cfg's bit-width: the policy peers mirror."""
    model = build_model(cfg, num_classes, in_chans)
    adabits.set_bits(model, cfg.train_bits[0])
    return model.conv1.weight_bits, model.fc.weight_bits


# ------------------------------------------------------------------ the peers
def brevitas_model(twin: FloatResNet, bits: int, stem_bits: int, fc_bits: int,
                   stats_steps: int = BREVITAS_STATS_STEPS) -> nn.Module:
    """`twin` with every conv/linear a Brevitas layer: `bits`-bit weights and inputs, except the first
    conv (`stem_bits` weights, images not quantized) and the classifier (`fc_bits` weights)."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    model = copy.deepcopy(twin)
    weight = {"weight_quant": Int8WeightPerTensorFloat, "weight_scaling_impl_type": "parameter_from_stats"}
    inputs = {"input_quant": Uint8ActPerTensorFloat, "input_bit_width": bits,
              "input_collect_stats_steps": stats_steps}
    modules = dict(model.named_modules())
    for name, layer in list(modules.items()):
        if isinstance(layer, nn.Conv2d):
            stem = name == "conv1"
            new: nn.Module = qnn.QuantConv2d(
                layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=layer.padding, dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None, **weight,
                weight_bit_width=stem_bits if stem else bits, **({} if stem else inputs))
        elif isinstance(layer, nn.Linear):
            new = qnn.QuantLinear(layer.in_features, layer.out_features, bias=layer.bias is not None, **weight,
                                  weight_bit_width=fc_bits, **inputs)
        else:
            continue
        new.load_state_dict(layer.state_dict(), strict=False)  # weight (and bias); the scales init from them
        parent, _, child = name.rpartition(".")
        setattr(modules[parent] if parent else model, child, new)
    return model


def torch_ao_prepare(twin: FloatResNet, example: Tensor) -> nn.Module:
    """FX QAT model of `twin` with the default x86 QAT qconfig (fake-quant, trainable)."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    return prepare_qat_fx(copy.deepcopy(twin).train(), get_default_qat_qconfig_mapping("x86"), (example,))


def torch_ao_convert(prepared: nn.Module) -> nn.Module:
    """The real int8 model (quantized kernels) of a trained FX QAT model."""
    from torch.ao.quantization.quantize_fx import convert_fx

    return convert_fx(copy.deepcopy(prepared).eval())


# ------------------------------------------------------------------ training and evaluation
def train(model: nn.Module, cfg: TrainConfig, loaders: Loaders) -> list[float]:
    """Our Trainer's recipe for one bit-width; returns the seconds of every optimizer step (data excluded)."""
    iters = len(loaders.train)
    if cfg.max_iters_per_epoch:
        iters = min(iters, cfg.max_iters_per_epoch)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, iters)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    times = []
    for epoch in range(cfg.num_epochs):
        model.train()
        loaders.train.set_epoch(epoch)
        for step, (images, labels) in enumerate(loaders.train):
            if step >= iters:
                break
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images), labels).backward()
            optimizer.step()
            scheduler.step()
            times.append(time.perf_counter() - start)
    return times


def peer_row(kind: str, cfg: TrainConfig) -> dict:
    """Train peer `kind` with the recipe of `cfg` (our individually trained row at the same bit-width)."""
    bits = check_kind(kind)
    if cfg.train_bits != [bits]:
        raise BadInput(f"peer {kind} stands next to our {bits}-bit row: the config must train bits_list [{bits}] "
                         f"alone, got train bits {cfg.train_bits}")
    if not cfg.fp_pretrained_file:
        raise BadInput(f"peer {kind} starts from our float model: set fp_pretrained_file")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.random_seed)
    loaders = build_loaders(cfg, torch.device("cpu"))
    twin = float_twin(our_float_model(cfg, loaders.num_classes, loaders.in_chans))
    example = next(iter(loaders.val))[0]
    if kind == "brevitas_w4a4":
        stem_bits, fc_bits = edge_bits(cfg, loaders.num_classes, loaders.in_chans)
        model = brevitas_model(twin, bits, stem_bits, fc_bits)
        notes = (f"Brevitas {version('brevitas')}: weights Int8WeightPerTensorFloat at {bits} bits (first conv "
                 f"{stem_bits}, classifier {fc_bits}; scale a parameter initialised from max|W|), inputs of every conv "
                 f"but the first and of the classifier Uint8ActPerTensorFloat at {bits} bits (learned scale, "
                 f"statistics for the first {BREVITAS_STATS_STEPS} steps); BN and residual adds in float, as ours")
    else:
        model = torch_ao_prepare(twin, example)
        notes = ("torch.ao FX QAT, default x86 QAT qconfig (8-bit per-channel weights, 8-bit activations with "
                 "reduce_range, images quantized too, BN folded into the convs); top1_int8 after convert_fx")
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    times = train(model, cfg, loaders)
    train_seconds = time.perf_counter() - start
    row = {"kind": kind, "top1": round(top1(model, loaders.val), 2)}
    if kind == "torch_ao_qat8":
        row["top1_int8"] = round(top1(torch_ao_convert(model), loaders.val), 2)
    row.update({"steps": len(times), "train_seconds": round(train_seconds, 1),
                "median_step_seconds": round(statistics.median(times), 4) if times else None, "notes": notes})
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True, choices=list(KIND_BITS))
    parser.add_argument("--out", help="also write the row as JSON to this file")
    args, config_args = parser.parse_known_args(argv)
    cfg = load_config(config_args).config
    row = {"command": command("training.peers", argv), **peer_row(args.kind, cfg)}
    report(row, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("training.peers"):
        main()
