"""One copy of the weights: an ONNX folder of every bit-width, its nested codes stored once, against the same
folder with a copy per file, in size, load time and latency.

Each model (random weights: sizes and speed do not depend on them) is converted with bits {8, 6, 5, 4},
calibrated on random images and exported twice with `adabits.export_model(..., format="onnx")`:
`shared_weights=True` (the default: `weights.bin` and a derivation per weight, folded when the session is
created) and `shared_weights=False`. Both folders are loaded through `adabits.runtime.load`, in ONNX Runtime
and OpenVINO (where installed), each load timed; then every bit-width of both runs in one loop, rounds
interleaved, medians. The size goal is the folder at most 1.25x one int8 model: our own 8-bit file.

    python -m benchmarks.deploy.shared_weights [--models resnet20 mobilenet_v2] [--batch 1 32] [--rounds 30]
        [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import adabits
from adabits.runtime import load

from ..common import BadInput, exit_on_bad_input, full_command, report, time_interleaved

BITS = [8, 6, 5, 4]
#: (input shape, classes) of each model: ResNet-20 as the main job runs it, MobileNet V2 as on ImageNet
SHAPES = {"resnet20": ((1, 28, 28), 10), "mobilenet_v2": ((3, 224, 224), 1000)}
CALIBRATION_IMAGES = 32


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".bin"))


def _model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    shape, classes = SHAPES[name]
    torch.manual_seed(0)
    model = adabits.create_model(name, bits_list=BITS, num_classes=classes, in_chans=shape[0])
    images = torch.randn(CALIBRATION_IMAGES, *shape)
    model.train()
    with torch.no_grad():  # BN statistics of every bit-width, so the grids are not degenerate
        for bits in BITS:
            adabits.set_bits(model, bits)
            model(images)
    return model.eval(), images


def _timed_load(folder: Path, runtime: str) -> tuple[Any, float]:
    start = time.perf_counter()
    loaded = load(folder, runtime=runtime)
    return loaded, time.perf_counter() - start


def measure(name: str, batches: list[int], rounds: int, runtimes: list[str], work: Path) -> dict[str, Any]:
    model, images = _model(name)
    folders = {}
    for kind, shared in (("own", False), ("shared", True)):
        done = adabits.export_model(model, work / f"{name}_{kind}", format="onnx", example=images[:1],
                                    calibration=images, shared_weights=shared)
        folders[kind] = done.path
    one_int8 = (folders["own"] / "model_8bit.onnx").stat().st_size
    sizes = {kind: _folder_bytes(folder) for kind, folder in folders.items()}
    result: dict[str, Any] = {
        "bytes": {**sizes, "own_8bit_file": one_int8, "weights_bin": (folders["shared"] / "weights.bin").stat().st_size},
        "shared_over_one_int8_file": round(sizes["shared"] / one_int8, 3),
        "own_over_one_int8_file": round(sizes["own"] / one_int8, 3),
        "shared_over_own": round(sizes["shared"] / sizes["own"], 3),
        "load_s": {}, "latency_ms": {}, "shared_over_own_latency": {}, "max_abs_logit_difference": {}}
    for runtime in runtimes:
        loaded, load_s = {}, {}
        for kind in ("own", "shared"):  # twice each, the second timed: the first pays the imports
            _timed_load(folders[kind], runtime)
            loaded[kind], load_s[kind] = _timed_load(folders[kind], runtime)
        result["load_s"][runtime] = {k: round(v, 3) for k, v in load_s.items()}
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, *SHAPES[name][0])).astype(np.float32)
            key = f"{runtime}_batch_{batch}"
            result["max_abs_logit_difference"][key] = max(  # what the shared files compute against their own copies
                float(np.abs(loaded["shared"].run(x, bits=bits) - loaded["own"].run(x, bits=bits)).max()) for bits in BITS)
            variants = {f"{kind}_{bits}bit": (lambda m=loaded[kind], b=bits, x=x: m.run(x, bits=b))
                        for bits in BITS for kind in loaded}
            times = time_interleaved(variants, rounds)
            medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            result["latency_ms"][key] = {k: round(v, 3) for k, v in medians.items()}
            result["shared_over_own_latency"][key] = {
                f"{bits}bit": round(medians[f"shared_{bits}bit"] / medians[f"own_{bits}bit"], 3) for bits in BITS}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in SHAPES]
    if unknown:
        raise BadInput(f"--models: unknown {', '.join(unknown)}; allowed: {', '.join(SHAPES)}")
    if args.rounds < 1 or any(b < 1 for b in args.batch):
        raise BadInput("--rounds and --batch take positive integers")
    runtimes = ["onnxruntime"]
    try:
        import openvino  # noqa: F401
        runtimes.append("openvino")
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(name, args.batch, args.rounds, runtimes, Path(tmp)) for name in args.models}
    report({"command": full_command("deploy.shared_weights", args), "bits": BITS, "runtimes": runtimes,
            "models": results}, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("deploy.shared_weights"):
        main()
