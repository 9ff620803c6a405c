"""Plain float copies of switchable models: each quantized layer's effective weight frozen into an
ordinary layer, so that other libraries (Brevitas, torch.ao, exporters) can start from exactly the
network this library trains.

The copy is taken at the model's current bit-width. It equals the model's forward wherever no layer
quantizes its input there: at 32 bits (the float SAT model of stage 1), or for weight-only layers.
At lower bit-widths it is the model with fake-quantized weights and float activations.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import QConv2d, QLinear
from .norms import SwitchableNorm
from .residual import Int8Observer


@torch.no_grad()
def plain_layer(layer: nn.Module) -> nn.Module:
    """The ordinary layer that computes what `layer` computes on its (unquantized) input.

    QConv2d -> nn.Conv2d and QLinear -> nn.Linear holding the effective weight (quantized,
    tanh-normalised, SAT-rescaled, as `quantized_weight()` gives it) and the bias; a
    SwitchBatchNorm2d or SwitchNorm -> a copy of its active norm; an Int8Observer (quantize_residual) -> nn.Identity.
    Raises TypeError for anything else.
    """
    if isinstance(layer, QConv2d):
        # torch types a conv's kernel_size/stride/... as tuple[int, ...] but its constructor's as pairs
        plain: nn.Conv2d | nn.Linear = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,  # type: ignore[arg-type]
            layer.padding, layer.dilation, layer.groups, layer.bias is not None,  # type: ignore[arg-type]
            layer.padding_mode)
    elif isinstance(layer, QLinear):
        plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    elif isinstance(layer, SwitchableNorm):
        return copy.deepcopy(layer.active)
    elif isinstance(layer, Int8Observer):
        return nn.Identity()  # the twin's activations are float
    else:
        raise TypeError(f"no plain float layer for {type(layer).__name__}")
    plain.to(device=layer.weight.device, dtype=layer.weight.dtype)
    plain.weight.copy_(layer.quantized_weight())
    if layer.bias is not None and plain.bias is not None:
        plain.bias.copy_(layer.bias)
    return plain.train(layer.training)


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` with every QConv2d, QLinear, SwitchBatchNorm2d, SwitchNorm and Int8Observer replaced by
    `plain_layer`.

    The architecture's own modules (blocks, pooling, the forward) are kept; the input model is not
    changed. The copy holds no quantized layer, so its state dict is an ordinary float one.
    """
    twin = copy.deepcopy(model)
    swappable = (QConv2d, QLinear, SwitchableNorm, Int8Observer)
    if isinstance(twin, swappable):
        return plain_layer(twin)
    for module in list(twin.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, swappable):
                setattr(module, child_name, plain_layer(child))
    return twin
