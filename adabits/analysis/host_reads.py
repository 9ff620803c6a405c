"""Count the reads of tensor values on the host: each one waits for the device to finish its queue.

A training step that reads no value on the host lets a GPU run ahead of Python; one `.item()` per
layer makes it wait once per layer. `HostReads` is a torch function mode that counts the tensor
methods that hand a value to Python (`item`, `tolist`, `bool(t)`, `float(t)`, `int(t)`, `numpy`),
on any device, so a test on a CPU shows what would stall a GPU.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
          torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy}


class HostReads(TorchFunctionMode):
    """`with HostReads() as reads: ...` then `reads.calls`: the name of each host read, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _READS:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))
