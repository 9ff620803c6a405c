"""What a device's backends need before the first step: cuDNN's autotuner on CUDA, a C++ compiler for Inductor on CPU.

A training step's shapes are fixed (one batch size, one image size; at most a smaller last batch), so
`cudnn.benchmark` chooses each convolution's fastest algorithm once and keeps it. `torch.compile`
on a CPU builds C++ with the system compiler at the first step; without one, Inductor fails deep
inside the first forward, so the keys that compile are checked here, with the fix in the message.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError


def configure(device: torch.device, cudnn_benchmark: bool) -> None:
    """Turn cuDNN's autotuner on (or off) for a CUDA run; a CPU run changes nothing."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark


def require_compiler(device: torch.device, compiling_keys: list[str]) -> None:
    """A ConfigError naming `compiling_keys` when they are on, the device is a CPU and no C++ compiler works."""
    if not compiling_keys or device.type != "cpu":
        return
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        cpp_builder.get_cpp_compiler()
    except InvalidCxxCompiler:
        keys = ", ".join(f"{key}: true" for key in compiling_keys)
        raise ConfigError(f"{keys} compiles C++ on the CPU (torch.compile's Inductor), and no C++ compiler works "
                          "here: install one (apt-get install g++, or set CXX) or set "
                          + " and ".join(f"{key}: false" for key in compiling_keys)) from None
