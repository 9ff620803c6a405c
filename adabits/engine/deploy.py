"""The commands behind `adabits test | profile | calibrate | export` (`evaluate_trained`, `profile`,
`calibrate`, `export`): config in, report text out.

None of them builds a Trainer. Each loads the model through `load_trained` (engine/loading.py: one
decision of which file holds the weights, the data shape from the config or the checkpoint) and
reads only the data it needs: `test` the validation split, `calibrate` training batches for the BN
statistics, the all-integer exports (`pte`, ONNX `graph=integer`) training images for their 8-bit grids,
the packed, `graph=qdq` and float (`bits=32`) exports and `profile` nothing. `export` is a thin mapping onto
`adabits.export_model`. Library errors (ValueError from the quant / export layers) become UserErrors with
one line for the CLI.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

import adabits

from ..analysis.evaluation import evaluate_meters as evaluate
from ..analysis.metrics import MeterSet
from ..analysis.profile import layer_table, profile_model, profile_table
from ..data import BatchLoader, build_loader, build_loaders
from ..errors import BitWidthError, UserError
from ..export.model_export import Exported, Format, Graph
from ..export.nbits_linear import ACCURACY_LEVEL
from ..quant.assignment import layer_pairs
from ..quant.bitwidth import FULL_PRECISION, Bits, bits_text, format_bits, parse_bits
from . import checkpoint, distributed
from .build import model_kwargs, resolve_device
from .config import TrainConfig
from .loading import SHAPE_KEY, TrainedModel, load_trained, run_dir, shape_record
from .report import eval_table

EXPORT_FORMATS = ("packed", "onnx", "pte")
#: graph= of `export`: unset, the all-integer graph where it covers the model, else the quantize/dequantize one
ONNX_GRAPHS = ("integer", "qdq")
#: the one line an old `graph=mixed` / `bias=` argument gets: the graph form they chose is retired
MIXED_RETIRED = ("graph=mixed was retired: use graph=integer (every conv and residual add an integer kernel; the "
                 "default where it covers the model), graph=qdq (each layer on its own grids with a float bias: the "
                 "model's arithmetic up to float rounding, what bias=float checked) or bits=32 (the float graph)")
BIAS_RETIRED = ("bias= was retired with graph=mixed: the all-integer graph (the default) sets its int32 bias grid "
                "itself; for a float bias (the model's arithmetic up to float rounding) use graph=qdq")
#: training images the 8-bit grids of an integer graph are calibrated on (residual adds, float-fed inputs)
CALIBRATION_IMAGES = 512


def parse_bits_option(value: Any) -> Bits:
    """A command's `bits=` value: B or [weight_bits, act_bits], normalised (`[8, 8]` is 8); one-line error."""
    try:
        return format_bits(parse_bits(value))
    except ValueError as exc:
        raise BitWidthError(f"bits={bits_text(value, 'config')}: {exc}; write bits=B or bits=[WEIGHT_BITS,ACT_BITS]") from None


def _of_model(bits: Any, allowed: list[Bits]) -> Bits:
    """`bits`, checked to be one of the model's bit-widths."""
    bits = parse_bits_option(bits)
    if parse_bits(bits) not in [parse_bits(b) for b in allowed]:
        raise BitWidthError(f"bits={bits_text(bits, 'config')} is not a bit-width of this model; allowed: {bits_text(allowed, 'config')}")
    return bits


def _notes(trained: TrainedModel) -> str:
    """The note of a deliberate choice of weights (from_start), as the first line of a command's output."""
    return f"note: {trained.source.note}\n" if trained.source.note else ""


def _fits(cfg: TrainConfig, trained: TrainedModel, num_classes: int) -> None:
    """The dataset's labels must be outputs of the model."""
    if num_classes > trained.shape.num_classes:
        raise UserError(f"dataset {cfg.dataset} has {num_classes} classes, but the model has "
                        f"{trained.shape.num_classes} outputs")


def _threads(cfg: TrainConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)


def _meters(cfg: TrainConfig, model: nn.Module, val: BatchLoader, device: torch.device) -> MeterSet:
    return evaluate(model, val, adabits.get_bits_list(model), cfg.topk, device=device,
                    criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))


def evaluate_trained_metrics(cfg: TrainConfig, from_start: bool = False, dist: distributed.DistEnv | None = None
                             ) -> tuple[TrainedModel, dict[Bits, dict[str, float]]]:
    """The trained model and the loss and top-k errors of every bit-width (calibrated ones included) on the
    validation set. Under torchrun (`dist`, the process group joined) each process evaluates its shard and the
    sums meet in one all-reduce, so every sample counts once."""
    dist = dist or distributed.DistEnv()
    device = distributed.device_for(dist, resolve_device(cfg.device))
    trained = load_trained(cfg, from_start=from_start, device=device)
    _threads(cfg)
    val, shape = build_loader(cfg, "val", device, dist.rank, dist.world_size)
    _fits(cfg, trained, shape.num_classes)
    meters = _meters(cfg, trained.model, val, device)
    if dist.enabled:
        meters.reduce_(distributed.all_reduce_sum_)
    return trained, meters.summary()


def evaluate_trained(cfg: TrainConfig, from_start: bool = False, dist: distributed.DistEnv | None = None) -> str:
    """`adabits test`: `evaluate_trained_metrics` as the notes of the weights chosen and a table."""
    trained, metrics = evaluate_trained_metrics(cfg, from_start, dist)
    loaded = "".join(f"{n}\n" for n in trained.notes if n != trained.source.note)
    return _notes(trained) + loaded + eval_table(metrics)


def profile(cfg: TrainConfig, bits: Any = None, verbose: bool = False, from_start: bool = False) -> str:
    """The profile table of the config's model, with the calibrated bit-widths of its weights.

    Counting needs no weights: without a trained checkpoint the freshly built model is profiled
    (its bit-widths are the config's), and the text says so. No data is read.
    """
    trained = load_trained(cfg, from_start=from_start, require_weights=False)
    order = (trained.bits_list if bits is None else [bits] if isinstance(bits, dict)  # an assignment: set_bits checks it
             else [_of_model(bits, trained.bits_list)])
    shape = trained.shape
    profiles = profile_model(trained.model, (shape.in_chans, shape.image_size, shape.image_size), order)
    untrained = "" if trained.source.path else " (no trained weights: the counts do not depend on them)"
    text = (_notes(trained) + f"{cfg.model}, input {shape.in_chans}x{shape.image_size}x{shape.image_size}"
            f"{untrained}\n" + profile_table(profiles))
    if verbose:
        text += "".join(f"\n\n{bits_text(p.bits, 'words')}:\n{layer_table(p)}" for p in profiles)
    return text


def _save(state: dict[str, Any], target: Path) -> None:
    try:
        checkpoint.save_atomic(state, target)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None


def calibrate(cfg: TrainConfig, bits: Any, num_batches: int = 50, out: str | None = None,
              from_start: bool = False) -> str:
    """Add bit-width `bits` to the trained model, estimate its BN statistics on training batches, save,
    then evaluate every bit-width."""
    if num_batches < 1:
        raise UserError(f"num_batches must be at least 1, got {num_batches}")
    bits = parse_bits_option(bits)
    device = resolve_device(cfg.device)
    trained = load_trained(cfg, from_start=from_start, device=device)
    model = trained.model
    if parse_bits(bits) in [parse_bits(b) for b in trained.bits_list]:
        raise BitWidthError(f"bits={bits_text(bits, 'config')} is already a bit-width of this model "
                            f"({bits_text(trained.bits_list, 'config')}); calibrate adds a new one")
    _threads(cfg)
    loaders = build_loaders(cfg, device)  # training batches for the statistics, then the evaluation
    _fits(cfg, trained, loaders.num_classes)
    try:
        adabits.calibrate_bn(model, bits, loaders.train, num_batches=num_batches)
    except ValueError as exc:
        raise UserError(f"calibrate {bits_text(bits)}: {exc}") from None
    source = trained.source.path
    assert source is not None and trained.checkpoint is not None  # load_trained requires weights here
    ckpt = trained.checkpoint
    state: dict[str, Any] = dict(ckpt) if ckpt.get("format") == checkpoint.FORMAT else {"format": checkpoint.FORMAT}
    state.update(model=model.state_dict(), model_name=cfg.model, bits_list=trained.bits_list,
                 calibrated_bits=[*state.get("calibrated_bits", []), bits], **{SHAPE_KEY: shape_record(trained.shape)},
                 calibration={"bits": bits, "num_batches": num_batches, "source": str(source)})
    state.pop("optimizer", None)  # the optimizer's state no longer matches the grown parameters
    state.pop("scheduler", None)
    target = Path(out) if out else source.with_name(f"{source.stem}_calibrated_{bits_text(bits, 'tag')}.pt")
    _save(state, target)
    return (_notes(trained) + f"calibrated {bits_text(bits)} on {num_batches} training batches; saved {target}\n"
            + eval_table(_meters(cfg, model, loaders.val, device).summary()))


def _float_checkpoint_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def export(cfg: TrainConfig, fmt: str, bits: Any = None, out: str | None = None, from_start: bool = False,
           graph: str | None = None, calibration_images: int = CALIBRATION_IMAGES,
           assignments: Mapping[str, Mapping[str, Bits]] | None = None, accuracy_level: int = ACCURACY_LEVEL) -> str:
    """`adabits export`: the trained model through `adabits.export_model`, as one packed file (every
    bit-width), one `.pte` (a method per bit-width) or ONNX (a folder with a file per bit-width, or the file
    of `bits`; `bits=32`: the float graph).

    The command adds only what the run knows: its weights and input shape, the first `calibration_images`
    training images for the all-integer graph's 8-bit grids (read only where that graph may be written),
    default paths under the run folder, and the registry call that built the model (so that
    `load_packed(path)` rebuilds it). `assignments` (name -> per-layer assignment, `assignments=@FILE`) adds a
    method per assignment to a `.pte` or ONNX folder. `accuracy_level` (onnx, pte) chooses the kernels of the
    quantize/dequantize graph's linear layers (`adabits.export_model`). Unset, `graph` is the library's "auto": the all-integer graph where its
    rules cover the model, else `graph=qdq` (a transformer), and the output line says which."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    if graph == "mixed":
        raise UserError(MIXED_RETIRED)
    if graph is not None and graph not in ONNX_GRAPHS:
        raise UserError(f"graph must be one of {', '.join(ONNX_GRAPHS)}; got {graph!r}")
    if accuracy_level != ACCURACY_LEVEL and fmt == "packed":
        raise UserError("accuracy_level= applies to --format onnx and pte (the linear layers' kernels); a packed file "
                        "stores weights")
    if fmt == "packed" and (graph is not None or bits is not None or assignments):
        raise UserError("graph=, bits= and assignments= apply to --format onnx and pte; a packed file holds every "
                        "bit-width (load_packed, then set_bits(model, assignment))")
    if calibration_images < 1:
        raise UserError(f"calibration_images must be at least 1, got {calibration_images}")
    trained = load_trained(cfg, from_start=from_start)
    chosen = None if bits is None else _of_model(bits, trained.bits_list)
    shape = trained.shape
    packed = fmt == "packed"
    try:
        done = adabits.export_model(
            trained.model, Path(out) if out else _default_path(cfg, fmt, chosen), format=cast(Format, fmt),
            bits=chosen, assignments=assignments, example=(shape.in_chans, shape.image_size, shape.image_size),
            calibration=_calibration(cfg, trained, fmt, chosen, graph, calibration_images, assignments),
            graph=cast(Graph, graph or "auto"), uint8_input=not cfg.normalize, images_are="training images",
            accuracy_level=accuracy_level,
            model_name=cfg.model if packed else None,
            model_kwargs=model_kwargs(cfg, shape.num_classes, shape.in_chans) if packed else None)
    except ImportError:
        need = ("--format pte needs ExecuTorch: pip install 'adabits[pte]' && pip install --no-deps "
                "executorch==1.5.1 torchao==0.18.0") if fmt == "pte" else (
                "ONNX export needs the onnx package (and onnxscript for graph=qdq and bits=32): "
                "pip install 'adabits[onnx]'")
        raise UserError(need) from None
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or out}: {exc.strerror or exc}") from None
    return _notes(trained) + _exported_text(trained, fmt, done)


def _default_path(cfg: TrainConfig, fmt: str, bits: Bits | None) -> Path:
    if fmt == "packed":
        return run_dir(cfg) / "model_packed.safetensors"
    if fmt == "pte":
        return run_dir(cfg) / "model.pte"
    return run_dir(cfg) / (f"model_{bits_text(bits, 'tag')}.onnx" if bits is not None else "onnx")


def _exported_text(trained: TrainedModel, fmt: str, done: Exported) -> str:
    """The command's report of one `export_model` result."""
    notes = "".join(f"\nnote: {note}" for note in done.notes)
    if fmt == "packed":
        float_bytes = _float_checkpoint_bytes(trained.model)
        size = done.path.stat().st_size
        top = max(parse_bits(b)[0] for b in trained.bits_list)
        return (f"wrote {done.path} (bit-widths {bits_text(done.bits, 'config')}): {done.how}\n"
                f"float32 state dict: {float_bytes:,} bytes; {top}/{FULL_PRECISION} of it: "
                f"{float_bytes * top // FULL_PRECISION:,} bytes; packed / float32 = {size / float_bytes:.3f}")
    if fmt == "pte":
        return (f"wrote {done.path} ({done.path.stat().st_size:,} bytes): methods "
                f"{', '.join(_method_names(done.bits))}; {done.how}" + notes)
    return f"wrote {done.path} ({', '.join(bits_text(b, 'words') for b in done.bits)}): {done.how}" + notes


def _calibration(cfg: TrainConfig, trained: TrainedModel, fmt: str, bits: Bits | None, graph: str | None,
                 count: int, assignments: Mapping[str, Mapping[str, Bits]] | None = None) -> torch.Tensor | None:
    """The training images the all-integer graph calibrates on, read only where that graph may be written."""
    chosen = [parse_bits(bits)] if bits is not None else [parse_bits(b) for b in trained.bits_list]
    for layers in (assignments or {}).values():
        chosen += layer_pairs(trained.model, layers)
    if fmt == "packed" or graph == "qdq" or not any(max(pair) <= 8 for pair in chosen):
        return None
    return calibration_images(cfg, count)


def calibration_images(cfg: TrainConfig, count: int) -> torch.Tensor:
    """The first `count` training images, as the model takes them (the training loader's order)."""
    loader, _ = build_loader(cfg, "train", torch.device("cpu"))
    batches, taken = [], 0
    for images, _labels in loader:
        batches.append(images)
        taken += len(images)
        if taken >= count:
            break
    return torch.cat(batches)[:count]


def _method_names(bits: Sequence[Any]) -> list[str]:
    from ..export.pte import method_name

    return [method_name(b) for b in bits]
