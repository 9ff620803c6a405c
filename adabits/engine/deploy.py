"""The deploy commands behind `adabits profile | calibrate | export`: config in, report text out.

Each takes a validated TrainConfig plus the command's own options, builds what it needs through
the same paths as training (data shapes, `build_model`, `load_pretrained`, `Trainer`), and turns
library errors (ValueError from the quant / export layers) into UserError for the CLI.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

import adabits

from ..analysis.profile import layer_table, profile_model, profile_table
from ..data import build_splits
from ..quant.bitwidth import parse_bits
from . import checkpoint
from .build import build_model, load_pretrained, model_kwargs
from .config import TrainConfig
from .errors import UserError
from .report import eval_table
from .trainer import Trainer

EXPORT_FORMATS = ("packed", "onnx")


def _shapes(cfg: TrainConfig) -> tuple[int, int, int]:
    """(num_classes, in_chans, image_size) from the config, reading the dataset only for what is unset."""
    if cfg.num_classes and cfg.in_chans and cfg.image_size:
        return cfg.num_classes, cfg.in_chans, cfg.image_size
    splits = build_splits(cfg)
    return (cfg.num_classes or splits.num_classes, cfg.in_chans or splits.in_chans,
            cfg.image_size or splits.image_size)


def _bits_arg(bits: Any, allowed: list[Any] | None = None) -> Any:
    if isinstance(bits, list) and len(bits) == 2 and all(isinstance(b, int) for b in bits):
        bits = tuple(bits)
    try:
        parse_bits(bits)
    except ValueError as exc:
        raise UserError(f"bits: {exc}") from None
    if allowed is not None and bits not in allowed:
        raise UserError(f"bits={bits} is not a bit-width of this model; allowed: {allowed}")
    return bits


def profile(cfg: TrainConfig, bits: Any = None, verbose: bool = False) -> str:
    """The profile table of the config's model (with pretrained_file's calibrated bit-widths, if any)."""
    num_classes, in_chans, size = _shapes(cfg)
    model = build_model(cfg, num_classes, in_chans)
    if cfg.pretrained_file:
        load_pretrained(model, cfg)
    allowed = adabits.get_bits_list(model)
    order = allowed if bits is None else [_bits_arg(b, allowed) for b in (bits if isinstance(bits, list) else [bits])]
    profiles = profile_model(model, (in_chans, size, size), order)
    text = f"{cfg.model}, input {in_chans}x{size}x{size}\n" + profile_table(profiles)
    if verbose:
        text += "".join(f"\n\n{p.bits} bits:\n{layer_table(p)}" for p in profiles)
    return text


def _trained(cfg: TrainConfig) -> tuple[Trainer, Path]:
    """A Trainer holding the trained weights (pretrained_file, or the run's best_model.pt)."""
    trainer = Trainer(cfg.model_copy(update={"test_only": True}), echo=lambda _m: None).prepare()
    source = Path(cfg.pretrained_file) if cfg.pretrained_file else trainer.run_dir / "best_model.pt"
    if cfg.pretrained_dir and cfg.pretrained_file and not source.is_absolute():
        source = Path(cfg.pretrained_dir) / source
    return trainer, source


def calibrate(cfg: TrainConfig, bits: Any, num_batches: int = 50, out: str | None = None) -> str:
    """Add bit-width `bits` to the trained model, estimate its BN statistics, save, evaluate all."""
    if num_batches < 1:
        raise UserError(f"num_batches must be at least 1, got {num_batches}")
    trainer, source = _trained(cfg)
    model = trainer.model
    bits = _bits_arg(bits)
    if bits in adabits.get_bits_list(model):
        raise UserError(f"bits={bits} is already a bit-width of this model ({adabits.get_bits_list(model)}); "
                        "calibrate adds a new one")
    adabits.calibrate_bn(model, bits, trainer.loaders.train, num_batches=num_batches)
    ckpt = checkpoint.read(source)
    state: dict[str, Any] = dict(ckpt) if ckpt.get("format") == checkpoint.FORMAT else {"format": checkpoint.FORMAT}
    all_bits = adabits.get_bits_list(model)
    state.update(model=model.state_dict(), model_name=cfg.model, bits_list=all_bits,
                 calibrated_bits=[*state.get("calibrated_bits", []), bits],
                 calibration={"bits": bits, "num_batches": num_batches, "source": str(source)})
    state.pop("optimizer", None)  # the optimizer's state no longer matches the grown parameters
    state.pop("scheduler", None)
    target = Path(out) if out else source.with_name(f"{source.stem}_calibrated_{bits}bit.pt")
    checkpoint.save_atomic(state, target)
    trainer.bits = all_bits
    return f"calibrated {bits} bits on {num_batches} training batches; saved {target}\n" + eval_table(trainer.evaluate())


def _float_checkpoint_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def export(cfg: TrainConfig, fmt: str, bits: Any = None, out: str | None = None, bias: Any = None) -> str:
    """Write the trained model as one packed file (every bit-width) or as ONNX at one bit-width
    (`bias`: how the ONNX graph applies the folded BN shift, see `export_onnx`)."""
    from ..export.onnx import BIAS_MODES, FloatWeightsWarning, export_onnx, integer_layer_count  # onnx: on use

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    if bias is not None and fmt != "onnx":
        raise UserError("bias=... applies to --format onnx only")
    bias = BIAS_MODES[0] if bias is None else bias
    if bias not in BIAS_MODES:
        raise UserError(f"bias must be one of {', '.join(BIAS_MODES)}; got {bias!r}")
    trainer, _ = _trained(cfg)
    model = trainer.model
    if fmt == "packed":
        from ..export.packed import save_packed

        target = Path(out) if out else trainer.run_dir / "model_packed.safetensors"
        kwargs = model_kwargs(cfg, cfg.num_classes or trainer.loaders.num_classes,
                              cfg.in_chans or trainer.loaders.in_chans)
        try:
            info = save_packed(model, target, model_name=cfg.model, model_kwargs=kwargs)
        except ValueError as exc:
            raise UserError(f"packed export: {exc}") from None
        float_bytes = _float_checkpoint_bytes(model)
        top = max(parse_bits(b)[0] for b in adabits.get_bits_list(model))
        return (f"wrote {target}: {info['bytes']:,} bytes (bit-widths {adabits.get_bits_list(model)}, "
                f"weight schemes {info['schemes']})\n"
                f"float32 state dict: {float_bytes:,} bytes; {top}/32 of it: {float_bytes * top // 32:,} bytes; "
                f"packed / float32 = {info['bytes'] / float_bytes:.3f}")
    if bits is None:
        raise UserError("ONNX export needs bits=B (one bit-width of the model; 32 exports float)")
    bits = _bits_arg(bits, adabits.get_bits_list(model))
    target = Path(out) if out else trainer.run_dir / f"model_{bits}bit.onnx"
    size = trainer.loaders.image_size
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FloatWeightsWarning)
            export_onnx(model, target, bits, (trainer.loaders.in_chans, size, size), uint8_input=not cfg.normalize,
                        bias=bias)
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'adabits[onnx]'") from None
    except ValueError as exc:
        raise UserError(f"ONNX export at {bits} bits: {exc}") from None
    notes = "".join(f"\nnote: {w.message}" for w in caught if issubclass(w.category, FloatWeightsWarning))
    integer, layers = integer_layer_count(target)
    return (f"wrote {target} ({target.stat().st_size:,} bytes, {bits} bits, bias {bias}: "
            f"{integer} of {layers} layers as integer kernels){notes}")

