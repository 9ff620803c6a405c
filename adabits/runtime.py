"""Run an exported model at the bit-width each request can afford, switching without a reload.

    from adabits.runtime import load
    model = load("runs/q_resnet20_adabits/model.pte")   # or a folder of ONNX files (runtime="openvino": in OpenVINO)
    model.bits_list                                     # ['8', '6', '5', '4']
    logits = model.run(images, bits=4)                  # images: N x C x H x W, raw 0..255 pixels
    latency = model.measure_latency(batch=1)            # {'8': 0.41, ...} milliseconds
    bits = pick_bits(latency, budget_ms=0.3, weight_bits=model.weight_bits)  # the most bits whose latency fits

A `.pte` holds one method per bit-width (`adabits.export.pte`); an ONNX folder holds one file per
bit-width and an `adabits_onnx.json` naming them (`adabits export --format onnx`). A per-layer assignment
exported by name (`export_model(..., assignments={"fast": {...}})`) is one more method, run as
`model.run(images, bits="fast")`; `weight_bits` gives every method's bits per weight, which ranks them. Every
bit-width is loaded when the model is, so `run(bits=...)` only picks a loaded method or session.
This module imports torch and the runtime it needs (executorch, onnxruntime or openvino), not the
training code. A file that is not a whole adabits export is refused with `ExportedFileError` before a runtime
parses it (a runtime handed random bytes may abort the process), and inputs a model cannot run (another
shape, NaN, fractional or out-of-range pixels for a model of raw 0..255 pixels) with `ModelInputError`;
a batch larger than a `.pte` planned memory for runs in chunks.
"""
from __future__ import annotations

import json
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ExportedFileError, ModelInputError

ONNX_MANIFEST = "adabits_onnx.json"
#: the batch a `.pte` plans its memory for when the file does not record its own (`max_batch` method)
PTE_MAX_BATCH = 64
#: a `.pte` starts with a flatbuffer offset, the identifier, and ExecuTorch's extended header: its magic, its
#: length, the program's size, where the segments start and their size (little-endian)
_PTE_HEADER = struct.Struct("<I4s4sIQQQ")


class SwitchableModel:
    """One exported model, every bit-width loaded: `run(images, bits)` switches by choosing one."""

    def __init__(self, runners: dict[str, Callable[[Any], np.ndarray]], input_shape: tuple[int, ...],
                 uint8_input: bool, source: Path, max_batch: int | None = None,
                 weight_bits: dict[str, float] | None = None, owner: Any = None) -> None:
        self._runners = runners
        # what the runners' memory belongs to, kept alive with them: an ExecuTorch program frees its methods'
        # memory when it is freed, and a method run after that reads freed memory (a crash, or wrong logits)
        self._owner = owner
        self._weight_bits = weight_bits or {}
        self._keys = {_key(bits): bits for bits in runners}
        self.input_shape = input_shape
        self.uint8_input = uint8_input
        self.source = source
        self.max_batch = max_batch  # images per call the runtime planned for (None: any); run() splits larger ones

    @property
    def bits_list(self) -> list[str]:
        """Every method: bit-widths ('8', '[4, 8]') and the names of exported assignments."""
        return list(self._runners)

    @property
    def weight_bits(self) -> dict[str, float]:
        """Bits per weight of each method (recorded at export; a bit-width's own weight bits in older files)."""
        return {bits: self._weight_bits.get(bits, _weight_bits_of(bits)) for bits in self.bits_list}

    def run(self, images: torch.Tensor | np.ndarray, bits: object) -> np.ndarray:
        """Logits (N x classes) of `images` at `bits` (8, '8', or '[4, 8]' as the model lists it, or the name of
        an exported assignment).

        `images` is N x C x H x W, of any real dtype: raw 0..255 pixels (whole numbers) for a model exported with
        `uint8_input`, else the normalised floats it was trained on. ModelInputError names what does not fit."""
        listed = self._keys.get(_key(bits))
        if listed is None:
            raise ModelInputError(f"bits={bits!r} is not a bit-width of {self.source}; it has "
                                  f"{', '.join(self.bits_list)}")
        array = self._checked(images)
        run = self._runners[listed]
        if self.max_batch is None or len(array) <= self.max_batch:
            return run(array)
        return np.concatenate([run(array[i:i + self.max_batch]) for i in range(0, len(array), self.max_batch)])

    def _checked(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """`images` as a float32 array, or ModelInputError naming the first thing the model cannot take."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        try:
            array = np.asarray(images)
        except (TypeError, ValueError) as exc:
            raise ModelInputError(f"images must be an array or tensor of N x {' x '.join(map(str, self.input_shape))} "
                                  f"numbers; got {type(images).__name__} ({exc})") from None
        if array.dtype.kind not in "uif":
            raise ModelInputError(f"images must hold real numbers; got dtype {array.dtype}")
        if array.ndim != 1 + len(self.input_shape) or tuple(array.shape[1:]) != self.input_shape:
            raise ModelInputError(f"images of shape {tuple(array.shape)}; {self.source} takes N x "
                                  f"{' x '.join(map(str, self.input_shape))}")
        if array.shape[0] == 0:
            raise ModelInputError("images hold no image (N = 0)")
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ModelInputError(f"images hold {int((~np.isfinite(array)).sum())} values that are NaN or infinite")
        if self.uint8_input:
            low, high = float(array.min()), float(array.max())
            whole = np.array_equal(array, np.round(array))
            if low < 0 or high > 255 or not whole:
                raise ModelInputError(f"{self.source} takes raw pixels, whole numbers from 0 to 255; got values from "
                                      f"{low:g} to {high:g}" + ("" if whole else " with fractions (images scaled to "
                                                                                  "[0, 1]?)"))
        return array

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


def pick_bits(latency_ms: dict[str, float], budget_ms: float, weight_bits: dict[str, float] | None = None) -> str | None:
    """The method with the most bits per weight whose latency fits `budget_ms` (None when none fits).

    A bit-width ranks by its own bits (then its activation bits); an exported assignment by its entry in
    `weight_bits` (`SwitchableModel.weight_bits`), without which it cannot be ranked (ModelInputError)."""
    def rank(bits: str) -> tuple[float, float]:
        pair = _bit_pair(bits)
        if weight_bits and bits in weight_bits:
            return (weight_bits[bits], pair[1] if pair else 0)
        if pair is None:
            raise ModelInputError(f"{bits!r} is an exported assignment: pass weight_bits=model.weight_bits to rank "
                                  "it beside the bit-widths")
        return pair

    fitting = [bits for bits, ms in latency_ms.items() if ms <= budget_ms]
    return max(fitting, key=rank) if fitting else None


def _bit_pair(bits: str) -> tuple[int, int] | None:
    """(weight, activation) bits of a method named by its bit-width ('8', '[4, 8]'); None for an assignment."""
    try:
        values = [int(v) for v in bits.strip("[]").split(",")]
    except ValueError:
        return None
    return (values[0], values[-1])


def _weight_bits_of(bits: str) -> float:
    """A bit-width method's bits per weight; nan for an assignment whose file does not record it."""
    pair = _bit_pair(bits)
    return float(pair[0]) if pair else float("nan")


def check_pte_header(path: Path) -> None:
    """ExportedFileError unless `path` starts with ExecuTorch's identifier and extended header and is as long
    as that header says: what keeps random or truncated bytes away from the runtime's parser."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(_PTE_HEADER.size)
    if len(head) < _PTE_HEADER.size:
        raise ExportedFileError(f"{path} is not an ExecuTorch program: {size} bytes, shorter than its header")
    _, identifier, magic, length, program, segments, segment_size = _PTE_HEADER.unpack(head)
    if identifier != b"ET12" or magic != b"eh00" or length < _PTE_HEADER.size - 8:
        raise ExportedFileError(f"{path} is not an ExecuTorch program (no ET12 / eh00 header)")
    expected = segments + segment_size if segment_size else program
    if program > size or expected != size:
        raise ExportedFileError(f"{path} is cut or padded: {size} bytes, its header says {expected}")


def _pte(path: Path) -> SwitchableModel:
    from executorch.runtime import Runtime

    check_pte_header(path)
    try:
        program = Runtime.get().load_program(path)
        missing = {"bits_list", "method_names", "input_shape", "uint8_input"} - set(program.method_names)
        if missing:
            raise ExportedFileError(f"{path} is not an adabits .pte: it lacks the methods {', '.join(sorted(missing))}")
        bits_list = [str(b) for b in program.load_method("bits_list").execute([])]
        shape = tuple(int(v) for v in program.load_method("input_shape").execute([]))
        uint8_input = bool(program.load_method("uint8_input").execute([])[0])
        names = [str(n) for n in program.load_method("method_names").execute([])]
        max_batch = (int(program.load_method("max_batch").execute([])[0]) if "max_batch" in program.method_names
                     else PTE_MAX_BATCH)
        methods = {bits: program.load_method(name) for bits, name in zip(bits_list, names)}
        weight_bits = ({bits: float(b) for bits, b in zip(bits_list, program.load_method("weight_bits").execute([]))}
                       if "weight_bits" in program.method_names else None)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        if isinstance(exc, ExportedFileError):
            raise
        raise ExportedFileError(f"{path}: ExecuTorch cannot load it ({str(exc).splitlines()[0][:200]})") from None

    def runner(method: Any) -> Callable[[Any], np.ndarray]:
        def run(images: Any) -> np.ndarray:
            x = torch.as_tensor(np.asarray(images, dtype=np.float32))
            return method.execute([x])[0].numpy()
        return run

    return SwitchableModel({bits: runner(m) for bits, m in methods.items()}, shape, uint8_input, path, max_batch,
                           weight_bits, owner=program)


def _onnx_folder(folder: Path, threads: int | None) -> SwitchableModel:
    import onnxruntime as ort

    manifest = _manifest(folder)
    options = ort.SessionOptions()
    # one session per bit-width shares the cores: a session whose threads spin after its run would
    # hold them against the next call at another bit-width
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    sessions = {}
    for bits, name in manifest["files"].items():
        try:
            sessions[str(bits)] = ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, NoSuchFile, ...)
            raise ExportedFileError(f"{folder / name}: ONNX Runtime cannot load it "
                                    f"({str(exc).splitlines()[0][:200]})") from None

    def runner(session: Any) -> Callable[[Any], np.ndarray]:
        feed = session.get_inputs()[0]
        dtype = np.uint8 if feed.type == "tensor(uint8)" else np.float32

        def run(images: Any) -> np.ndarray:
            return session.run(None, {feed.name: np.asarray(images).astype(dtype, copy=False)})[0]
        return run

    return SwitchableModel({bits: runner(s) for bits, s in sessions.items()}, tuple(manifest["input_shape"]),
                           bool(manifest["uint8_input"]), folder, weight_bits=manifest.get("weight_bits"))


def openvino_config(accuracy_level: int, threads: int | None = None) -> dict[str, str]:
    """OpenVINO CPU settings for an adabits ONNX file (see `_openvino_folder`)."""
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if accuracy_level == 0:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "0"
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def _openvino_folder(folder: Path, threads: int | None) -> SwitchableModel:
    """The ONNX folder compiled by OpenVINO for its CPU plugin, in float32 precision (its default on CPUs with
    bf16 units is bf16, which would move the logits away from what the model computes) and without its
    dynamic quantization of activations (int8 compute of 4- and 8-bit linear weights, `accuracy_level` 4 in
    ONNX Runtime's terms) unless the export chose that (`adabits_onnx.json` "accuracy_level": 4)."""
    import openvino as ov

    manifest = _manifest(folder)
    config = openvino_config(manifest.get("accuracy_level", 0), threads)
    core = ov.Core()
    compiled = {}
    for bits, name in manifest["files"].items():
        try:
            compiled[str(bits)] = core.compile_model(core.read_model(str(folder / name)), "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError and its own types for what it cannot read
            raise ExportedFileError(f"{folder / name}: OpenVINO cannot load it "
                                    f"({str(exc).strip().splitlines()[0][:200]})") from None

    def runner(model: Any) -> Callable[[Any], np.ndarray]:
        request = model.create_infer_request()
        dtype = np.uint8 if model.input(0).get_element_type() == ov.Type.u8 else np.float32

        def run(images: Any) -> np.ndarray:
            return np.array(request.infer([np.asarray(images).astype(dtype, copy=False)])[0])
        return run

    return SwitchableModel({bits: runner(m) for bits, m in compiled.items()}, tuple(manifest["input_shape"]),
                           bool(manifest["uint8_input"]), folder, weight_bits=manifest.get("weight_bits"))


def _manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, checked: files (bit-width -> a file in the folder), input shape, uint8 input."""
    path = folder / ONNX_MANIFEST
    if not path.is_file():
        raise ExportedFileError(f"{folder} has no {ONNX_MANIFEST}; export it with `adabits export --format onnx`")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExportedFileError(f"{path} is not valid JSON ({exc})") from None
    files, shape = (manifest.get("files"), manifest.get("input_shape")) if isinstance(manifest, dict) else (None, None)
    if (not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values())
            or not isinstance(shape, list) or not all(isinstance(v, int) and v > 0 for v in shape)
            or not isinstance(manifest.get("uint8_input"), bool)):
        raise ExportedFileError(f"{path} does not describe an export: expected 'files' (bit-width -> file name), "
                                "'input_shape' (positive integers) and 'uint8_input' (true or false)")
    weight_bits = manifest.get("weight_bits", {})
    if (not isinstance(weight_bits, dict) or set(weight_bits) - set(files)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in weight_bits.values())):
        raise ExportedFileError(f"{path}: 'weight_bits' maps the files' keys to numbers (bits per weight)")
    if manifest.get("accuracy_level", 0) not in (0, 4) or isinstance(manifest.get("accuracy_level"), bool):
        raise ExportedFileError(f"{path}: 'accuracy_level' is 0 or 4 (the linear layers' compute)")
    for name in files.values():
        if Path(name).name != name or not (folder / name).is_file():
            raise ExportedFileError(f"{path} names {name!r}, which is not a file of {folder}")
    return manifest


#: what runs an export: a `.pte` runs in ExecuTorch, an ONNX folder in ONNX Runtime or OpenVINO
RUNTIMES = {"executorch": "pte", "onnxruntime": "onnx", "openvino": "onnx"}


def load(path: str | Path, threads: int | None = None, runtime: str | None = None) -> SwitchableModel:
    """A `.pte` file (ExecuTorch) or a folder of ONNX files (ONNX Runtime; `runtime="openvino"`: OpenVINO's
    CPU plugin), `threads` per session.

    Raises ExportedFileError (one line naming the file) for anything that is not a whole adabits export,
    ValueError for a runtime that does not run it, ImportError (naming the extra) when the runtime is missing."""
    path = Path(path)
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    kind = "onnx" if path.is_dir() else "pte" if path.suffix == ".pte" and path.is_file() else None
    if kind is None:
        raise ExportedFileError(f"{path}: expected a .pte file or a folder of ONNX files with {ONNX_MANIFEST}")
    if runtime is not None and RUNTIMES[runtime] != kind:
        raise ValueError(f"{path} is {'an ONNX folder' if kind == 'onnx' else 'an ExecuTorch program'}; "
                         f"runtime={runtime!r} runs {'ONNX folders' if RUNTIMES[runtime] == 'onnx' else '.pte files'}")
    if kind == "pte":
        return _pte(path)
    if runtime == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ImportError("runtime='openvino' needs OpenVINO: pip install 'adabits[openvino]'") from None
        return _openvino_folder(path, threads)
    return _onnx_folder(path, threads)
