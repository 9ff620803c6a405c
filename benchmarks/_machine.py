"""What a result was measured on: CPU model, cores, the int8 instructions that decide integer kernel
speed, and the versions of the libraries that ran. Recorded in every result file by `_results.report`."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: CPU flags (as /proc/cpuinfo names them) of the instructions int8 kernels use: x86 AVX2 / AVX-512
#: byte ops, VNNI dot products, AMX tiles; ARM dot product and int8 matrix multiply
INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "asimddp", "i8mm")
#: libraries whose version is recorded when installed (read from package metadata: nothing is imported)
PACKAGES = ("onnxruntime", "onnx", "brevitas", "executorch", "torchao")


def parse_cpuinfo(text: str) -> tuple[str | None, list[str]]:
    """The CPU model and the present INT8_FLAGS, from the text of /proc/cpuinfo (x86 or ARM)."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [flag for flag in INT8_FLAGS if flag in flags]


def describe() -> dict[str, Any]:
    """The machine and software of this process; `int8_instructions` is None where it can't be read."""
    try:
        model, int8 = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, int8 = None, None
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "int8_instructions": int8,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        **versions,
    }
