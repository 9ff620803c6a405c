"""Calibrate a converted model on data, with no training: what makes a pretrained float model usable at once.

`calibrate(model, batches)` first
- fixes the clipping side of each layer whose side is chosen from the data (`double_side: auto`) by the
  quantization error of either side at the layer's bit-widths (`choose_clipping_sides`);
- chooses each per-channel weight's clipping (`choose_weight_clipping`: per output channel, the share of
  max|W| with the least squared error at the layer's lowest weight bit-width; one scale serves every
  bit-width, so the nested codes stay nested);
then goes through every bit-width of the model and, for that bit-width alone:
1. chooses each layer's PACT clipping level from its actual input, layer by layer in forward order
   (`clipping.init_clipping_levels`, least squared error);
2. corrects the running statistics of that bit-width's own BatchNorm copies by the shift quantization
   gives each channel: the batch statistics of every BN input are measured on the calibration batches
   twice, with every layer in float and with every layer quantized, and the copy's mean moves by their
   difference and its variance by their ratio (`correct_bn_statistics`). Re-estimating the statistics
   outright would replace what the float model learned on its whole training set with an estimate from a
   few batches: measured on a small ResNet, that alone moved its logits by 37 % at 16 bits;
3. measures how far each quantized layer's output moved from what the same layer computes in float on
   the same input (`layer_drift`), which `conversion_report` shows per layer.
Every other bit-width's clipping levels and BN copies are left as they were.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import CalibrationError
from .bitwidth import FULL_PRECISION, Bits, format_bits, parse_bits, switchable_modules, use_bits
from .bn_calibration import estimated_bns
from .clipping import init_clipping_levels, mse_optimal
from .functional import channel_max, channel_weight
from .layers import QConv2d, QLinear, QuantLayer

#: images the PACT clipping levels are chosen from (the first batches, joined); BN statistics use every batch
CLIPPING_IMAGES = 256
#: the shares of max|W| a per-channel weight scale may keep
WEIGHT_CLIP_CANDIDATES = tuple(1.0 - 0.025 * i for i in range(21))  # 1.0 down to 0.5


@dataclass
class CalibrationReport:
    """What `calibrate` chose and measured: per bit-width, each quantized layer's output drift (the relative
    L2 distance between its quantized output and the float layer's output on the same input) and, when a
    float reference was given, the share of calibration images whose top-1 class the model keeps."""

    drift: dict[Bits, dict[str, float]] = field(default_factory=dict)
    top1_agreement: dict[Bits, float] = field(default_factory=dict)
    images: int = 0

    def __str__(self) -> str:
        lines = [f"calibrated on {self.images} images"]
        for bits, layers in self.drift.items():
            worst = max(layers.items(), key=lambda kv: kv[1]) if layers else ("-", 0.0)
            agreement = (f", top-1 kept on {100 * self.top1_agreement[bits]:.2f} %"
                         if bits in self.top1_agreement else "")
            lines.append(f"  {bits}-bit: largest layer drift {worst[1]:.4f} ({worst[0]}){agreement}")
        return "\n".join(lines)


def calibration_inputs(batches: Iterable[object], max_batches: int | None = None) -> list[Tensor]:
    """The input tensors of `batches` (tensors, or (inputs, labels) pairs as a DataLoader gives them),
    checked: at least one, each a floating-point tensor with a batch dimension, all of one shape but the batch."""
    if isinstance(batches, Tensor):
        raise CalibrationError("calibration takes an iterable of batches (a list of tensors or a DataLoader), "
                               f"not one tensor; wrap it: [images] (got a tensor of shape {tuple(batches.shape)})")
    try:
        iterator = iter(batches)
    except TypeError:
        raise CalibrationError(f"calibration must be an iterable of input batches, got {type(batches).__name__}") \
            from None
    inputs: list[Tensor] = []
    for index, batch in enumerate(iterator):
        if max_batches is not None and index >= max_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
            what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise CalibrationError(f"calibration batch {index} is {what}; expected floating-point inputs with a "
                                   "batch dimension (N, ...)")
        if inputs and x.shape[1:] != inputs[0].shape[1:]:
            raise CalibrationError(f"calibration batch {index} has inputs of shape {tuple(x.shape[1:])}, batch 0 "
                                   f"had {tuple(inputs[0].shape[1:])}")
        if x.shape[0] == 0:
            raise CalibrationError(f"calibration batch {index} is empty")
        inputs.append(x)
    if not inputs:
        raise CalibrationError("calibration got no batches: pass at least one batch of inputs")
    return inputs


def _on(model: nn.Module, inputs: list[Tensor]) -> list[Tensor]:
    parameter = next(model.parameters(), None)
    return inputs if parameter is None else [x.to(parameter.device) for x in inputs]


@torch.no_grad()
def choose_weight_clipping(model: nn.Module) -> int:
    """Set every per-channel layer's `weight_clip`: per output channel, the share of max|W| whose quantized
    weight is closest (least squared error) to the float weight at the lowest weight bit-width the layer runs
    at. Weights only, no data. Returns the number of layers."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer) and m.per_channel]
    for layer in layers:
        bits = min(layer.runs_at(pair)[0] for pair in layer.bits_list)
        if bits >= FULL_PRECISION:
            continue
        weight = layer.weight.detach().float()
        top = channel_max(weight)
        errors = torch.stack([
            (channel_weight(weight, bits, layer.weight_scheme, top * share) - weight)
            .pow(2).reshape(weight.shape[0], -1).sum(dim=1)
            for share in WEIGHT_CLIP_CANDIDATES
        ])
        best = torch.tensor(WEIGHT_CLIP_CANDIDATES, device=weight.device)[errors.argmin(dim=0)]
        layer.weight_clip.copy_(best)
    return len(layers)


@contextmanager
def _float_layers(model: nn.Module) -> Iterator[None]:
    """Every quantized layer computes in float (its float weight, no input clipping) inside the block."""
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    saved = [(m.weight_bits, m.act_bits, m.pact_fp) for m in layers]
    for layer in layers:
        layer.weight_bits, layer.act_bits, layer.pact_fp = FULL_PRECISION, FULL_PRECISION, False
    try:
        yield
    finally:
        for layer, (weight_bits, act_bits, pact_fp) in zip(layers, saved):
            layer.weight_bits, layer.act_bits, layer.pact_fp = weight_bits, act_bits, pact_fp


def _batch_statistics(model: nn.Module, bns: list[_BatchNorm], inputs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Per BN, the mean and variance of its input over `inputs` (train-mode forwards, cumulative average, every
    other module in eval mode); the BNs' own running statistics are left as they were."""
    saved = [(bn.running_mean.clone(), bn.running_var.clone(),  # type: ignore[union-attr]
              bn.num_batches_tracked.clone(), bn.momentum) for bn in bns]  # type: ignore[union-attr]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for x in inputs:
            model(x)
        return [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]  # type: ignore[union-attr]
    finally:
        for bn, (mean, var, count, momentum) in zip(bns, saved):
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
            bn.num_batches_tracked.copy_(count)  # type: ignore[union-attr]
            bn.momentum = momentum
            bn.eval()


@torch.no_grad()
def correct_bn_statistics(model: nn.Module, inputs: list[Tensor]) -> int:
    """At the current bit-width, move each of its own BN copies' running statistics by the shift quantization
    gives its input: mean + (quantized mean - float mean), variance * (quantized variance / float variance),
    both measured on `inputs`. BNs shared by every bit-width are left alone. Returns the number corrected."""
    bns = estimated_bns(switchable_modules(model))
    if not bns:
        return 0
    with _float_layers(model):
        reference = _batch_statistics(model, bns, inputs)
    quantized = _batch_statistics(model, bns, inputs)
    for bn, (mean_f, var_f), (mean_q, var_q) in zip(bns, reference, quantized):
        ratio = torch.where(var_f > bn.eps, var_q / var_f.clamp_min(bn.eps), torch.ones_like(var_f))
        bn.running_mean.add_(mean_q - mean_f)  # type: ignore[union-attr]
        bn.running_var.mul_(ratio)  # type: ignore[union-attr]
    return len(bns)


def _side_errors(x: Tensor, bits: Iterable[int], scheme: str) -> tuple[float, float]:
    """Summed over `bits`, each side's least squared quantization error of `x` relative to the better side's."""
    one = two = 0.0
    for b in bits:
        e1, e2 = (float(mse_optimal(x, b, scheme, side)[1]) for side in (False, True))
        best = min(e1, e2)
        one, two = (one + e1 / best, two + e2 / best) if best > 0 else (one + 1.0, two + 1.0)
    return one, two


@torch.no_grad()
def choose_clipping_sides(model: nn.Module, images: Tensor) -> dict[str, bool]:
    """Fix the side of every `double_side: auto` layer that has not chosen one, from its float input on `images`:
    the side whose least quantization error, relative to the other side's at each of the layer's activation
    bit-widths, sums lower. A GELU's output, whose small negatives the rule of `QuantLayer.choose_side` clips,
    gets two-sided clipping when keeping them matters (it did: one-sided, a ViT's MLP output layers moved by
    20-32 % at every bit-width). Returns {layer name: two-sided}."""
    chosen: dict[str, bool] = {}

    def decide(name: str):  # noqa: ANN202 - a forward pre-hook
        def hook(layer: nn.Module, args: tuple) -> None:
            assert isinstance(layer, QuantLayer)
            bits = sorted({layer.runs_at(p)[1] for p in layer.bits_list} - {FULL_PRECISION})
            if layer._side_known or not bits:
                return
            one, two = _side_errors(args[0], bits, layer.act_quant_scheme)
            layer.set_side(two < one)
            chosen[name] = two < one
        return hook

    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer) and m.auto_side}
    handles = [layer.register_forward_pre_hook(decide(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with _float_layers(model):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return chosen


def _float_output(layer: QuantLayer, x: Tensor) -> Tensor:
    """What the layer computes in float (its float weight, no input clipping) on input `x`."""
    if isinstance(layer, QConv2d):
        return layer._conv_forward(x, layer.weight, layer.bias)
    assert isinstance(layer, QLinear)
    return F.linear(x, layer.weight, layer.bias)


@torch.no_grad()
def layer_drift(model: nn.Module, inputs: list[Tensor]) -> dict[str, float]:
    """At the current bit-width, per quantized conv/linear: ||quantized output - float output|| / ||float output||
    on the same inputs, summed over the batches."""
    sums: dict[str, list[float]] = {}

    def measure(name: str):  # noqa: ANN202 - a forward hook
        def hook(layer: nn.Module, args: tuple, output: Tensor) -> None:
            assert isinstance(layer, QuantLayer)
            reference = _float_output(layer, args[0])
            totals = sums.setdefault(name, [0.0, 0.0])
            totals[0] += float((output - reference).float().pow(2).sum())
            totals[1] += float(reference.float().pow(2).sum())
        return hook

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}
    handles = [layer.register_forward_hook(measure(name)) for name, layer in layers.items()]
    try:
        for x in inputs:
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (err / ref) ** 0.5 if ref > 0 else 0.0 for name, (err, ref) in sums.items()}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[object], *, bits: Iterable[Bits] | None = None,
              max_batches: int | None = None, reference: Mapping[int, Tensor] | None = None) -> CalibrationReport:
    """Calibrate every bit-width of a converted model (or those in `bits`) on `batches`, with no training.

    `batches` yields input tensors or (inputs, labels) pairs (a DataLoader); `max_batches` caps how many
    are read. The per-channel weight clipping, which every bit-width shares, is chosen only when `bits` is
    None, so calibrating some bit-widths leaves the others computing exactly what they did. `reference`
    (batch index -> the float model's logits) lets the report say how many top-1 classes are kept.
    The model's mode and bit-width are restored. Each layer records its drift per bit-width
    (`QuantLayer.output_drift`), which `conversion_report` shows. Raises CalibrationError (one line) for
    an empty or malformed `batches`.
    """
    modules = switchable_modules(model)
    if not modules:
        raise CalibrationError(f"calibrate needs a converted model (adabits.quantize_model); {type(model).__name__} "
                               "has no quantized layers")
    inputs = _on(model, calibration_inputs(batches, max_batches))
    order = [format_bits(p) for p in modules[0].bits_list] if bits is None else list(bits)
    report = CalibrationReport(images=sum(x.shape[0] for x in inputs))
    if bits is None:  # one weight scale serves every bit-width: chosen only when all of them are calibrated
        choose_weight_clipping(model)
    joined = torch.cat(inputs)[:CLIPPING_IMAGES]
    choose_clipping_sides(model, joined)
    was_training = model.training
    try:
        for index, b in enumerate(order):
            if min(parse_bits(b)) >= FULL_PRECISION:
                continue  # the float network: nothing quantized, and its BN statistics are the source model's
            init_clipping_levels(model, joined, [b], choose_shared=index == 0)
            model.eval()
            with use_bits(model, b):
                correct_bn_statistics(model, inputs)
                report.drift[b] = layer_drift(model, inputs)
                if reference is not None:
                    kept = [(model(x).argmax(1) == reference[i].argmax(1)).float() for i, x in enumerate(inputs)
                            if i in reference]
                    report.top1_agreement[b] = float(torch.cat(kept).mean()) if kept else float("nan")
    finally:
        model.train(was_training)
    for name, layer in model.named_modules():
        if isinstance(layer, QuantLayer):
            layer.output_drift.update({b: drift[name] for b, drift in report.drift.items() if name in drift})
    return report
