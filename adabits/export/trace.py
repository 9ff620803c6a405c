"""The torch.fx trace the exporters walk: the leaf modules of `op_rules.SOURCE_RULES` (quantized layers,
switchable BNs, 8-bit residual grids) stay whole nodes."""
from __future__ import annotations

import torch.fx as fx
from torch import nn

from ..models.common import as_float_input
from .op_rules import LEAF_MODULES


class _LeafTracer(fx.Tracer):
    """Keeps the table's leaf modules as single nodes (the exporters convert them whole)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, LEAF_MODULES) or super().is_leaf_module(module, qualified_name)


def trace_quantized(model: nn.Module) -> fx.Graph:
    """The model's graph, with `as_float_input` (a dtype cast of the image) kept as one call."""
    return _LeafTracer(autowrap_functions=(as_float_input,)).trace(model)
