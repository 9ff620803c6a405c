"""Run an exported model at the bit-width each request can afford, switching without a reload.

    from adabits.runtime import load
    model = load("runs/q_resnet20_adabits/model.pte")   # or a folder of ONNX files
    model.bits_list                                     # ['8', '6', '5', '4']
    logits = model.run(images, bits=4)                  # images: N x C x H x W, raw 0..255 pixels
    latency = model.measure_latency(batch=1)            # {'8': 0.41, ...} milliseconds
    bits = pick_bits(latency, budget_ms=0.3)            # the most bits whose latency fits

A `.pte` holds one method per bit-width (`adabits.export.pte`); an ONNX folder holds one file per
bit-width and an `adabits_onnx.json` naming them (`adabits export --format onnx`). Every
bit-width is loaded when the model is, so `run(bits=...)` only picks a loaded method or session.
This module imports torch and the runtime it needs (executorch or onnxruntime), not the training
code.
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ONNX_MANIFEST = "adabits_onnx.json"


class SwitchableModel:
    """One exported model, every bit-width loaded: `run(images, bits)` switches by choosing one."""

    def __init__(self, runners: dict[str, Callable[[Any], np.ndarray]], input_shape: tuple[int, ...],
                 uint8_input: bool, source: Path) -> None:
        self._runners = runners
        self._keys = {_key(bits): bits for bits in runners}
        self.input_shape = input_shape
        self.uint8_input = uint8_input
        self.source = source

    @property
    def bits_list(self) -> list[str]:
        return list(self._runners)

    def run(self, images: torch.Tensor | np.ndarray, bits: object) -> np.ndarray:
        """Logits (N x classes) of `images` at `bits` (8, '8', or '[4, 8]' as the model lists it)."""
        listed = self._keys.get(_key(bits))
        if listed is None:
            raise ValueError(f"bits={bits!r} is not a bit-width of {self.source}; it has {', '.join(self.bits_list)}")
        shape = tuple(images.shape[1:])
        if shape != self.input_shape:
            raise ValueError(f"images of shape {shape} per sample; {self.source} takes {self.input_shape}")
        return self._runners[listed](images)

    def measure_latency(self, batch: int = 1, repeats: int = 20) -> dict[str, float]:
        """Median milliseconds of one call per bit-width, on random images, rounds interleaved."""
        images = np.random.default_rng(0).integers(0, 256, (batch, *self.input_shape)).astype(np.float32)
        times: dict[str, list[float]] = {bits: [] for bits in self.bits_list}
        for bits in self.bits_list:  # a first call per method warms it
            self.run(images, bits)
        for _ in range(repeats):
            for bits in self.bits_list:
                start = time.perf_counter()
                self.run(images, bits)
                times[bits].append((time.perf_counter() - start) * 1000)
        return {bits: statistics.median(t) for bits, t in times.items()}


def _key(bits: object) -> str:
    """A bit-width as the lookup compares it: 8, '8', [4, 8] and '[4,8]' alike."""
    text = str(list(bits)) if isinstance(bits, (list, tuple)) else str(bits)
    return text.replace(" ", "")


def pick_bits(latency_ms: dict[str, float], budget_ms: float) -> str | None:
    """The bit-width with the most weight bits whose latency fits `budget_ms` (None when none fits)."""
    fitting = [bits for bits, ms in latency_ms.items() if ms <= budget_ms]
    return max(fitting, key=lambda b: [int(v) for v in b.strip("[]").split(",")]) if fitting else None


def _pte(path: Path) -> SwitchableModel:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(path)
    missing = {"bits_list", "method_names", "input_shape", "uint8_input"} - set(program.method_names)
    if missing:
        raise ValueError(f"{path} is not an adabits .pte: it lacks the methods {', '.join(sorted(missing))}")
    bits_list = [str(b) for b in program.load_method("bits_list").execute([])]
    shape = tuple(int(v) for v in program.load_method("input_shape").execute([]))
    uint8_input = bool(program.load_method("uint8_input").execute([])[0])
    names = [str(n) for n in program.load_method("method_names").execute([])]
    methods = {bits: program.load_method(name) for bits, name in zip(bits_list, names)}

    def runner(method: Any) -> Callable[[Any], np.ndarray]:
        def run(images: Any) -> np.ndarray:
            x = torch.as_tensor(np.asarray(images, dtype=np.float32))
            return method.execute([x])[0].numpy()
        return run

    return SwitchableModel({bits: runner(m) for bits, m in methods.items()}, shape, uint8_input, path)


def _onnx_folder(folder: Path, threads: int | None) -> SwitchableModel:
    import onnxruntime as ort

    manifest_path = folder / ONNX_MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{folder} has no {ONNX_MANIFEST}; export it with `adabits export --format onnx`")
    manifest = json.loads(manifest_path.read_text())
    options = ort.SessionOptions()
    # one session per bit-width shares the cores: a session whose threads spin after its run would
    # hold them against the next call at another bit-width
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    sessions = {str(bits): ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
                for bits, name in manifest["files"].items()}

    def runner(session: Any) -> Callable[[Any], np.ndarray]:
        feed = session.get_inputs()[0]
        dtype = np.uint8 if feed.type == "tensor(uint8)" else np.float32

        def run(images: Any) -> np.ndarray:
            return session.run(None, {feed.name: np.asarray(images).astype(dtype, copy=False)})[0]
        return run

    return SwitchableModel({bits: runner(s) for bits, s in sessions.items()}, tuple(manifest["input_shape"]),
                           bool(manifest["uint8_input"]), folder)


def load(path: str | Path, threads: int | None = None) -> SwitchableModel:
    """A `.pte` file (ExecuTorch) or a folder of ONNX files (ONNX Runtime, `threads` per session)."""
    path = Path(path)
    if path.is_dir():
        return _onnx_folder(path, threads)
    if path.suffix == ".pte" and path.is_file():
        return _pte(path)
    raise ValueError(f"{path}: expected a .pte file or a folder of ONNX files with {ONNX_MANIFEST}")
