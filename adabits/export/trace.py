"""The torch.fx trace the exporters walk: quantized layers and switchable BNs stay whole nodes."""
from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..models.common import as_float_input
from ..quant.layers import QuantLayer, SwitchBatchNorm2d
from ..quant.residual import Int8Observer


class _LeafTracer(fx.Tracer):
    """Keeps quantized layers and switchable BNs as single nodes (the exporters convert them whole)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (isinstance(module, (QuantLayer, SwitchBatchNorm2d, Int8Observer))
                or super().is_leaf_module(module, qualified_name))


def trace_quantized(model: nn.Module) -> fx.Graph:
    """The model's graph, with `as_float_input` (a dtype cast of the image) kept as one call."""
    return _LeafTracer(autowrap_functions=(as_float_input,)).trace(model)
