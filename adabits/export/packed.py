"""One safetensors file for every bit-width: each weight stored once, as bit-packed integer codes.

For the nested weight schemes (`modified`, `centered`: `QuantScheme.nested`) the b-bit code of a weight is
its B-bit code shifted right by B - b bits, so a layer stores only the codes of its highest weight
bit-width B, packed B bits per weight, and derives every lower one at load time. `original`
(DoReFa, round(x (2^b - 1))) is not nested: such a layer stores the packed codes of every weight
bit-width it runs at. A layer that also runs at full precision stores its float weight as well.
Everything that is not a quantized weight (per-bit BN, per-bit alpha, biases) is stored as float
tensors, and the SAT scale of every (layer, bit-width) is stored as computed by the float model.

`load_packed(path)` rebuilds the model from the file's metadata with `adabits.create_model` and
gives the fake-quant model's logits at every stored bit-width (bit-exact: the same float operations
turn the same codes into the same weights). Any converted model is stored too (`adabits.quantize_model`,
a model of one's own): without a registry name the file holds no recipe to rebuild it, and
`load_packed(path, model=...)` loads it into the model built the same way (which also works for a
registered model's file).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from .. import integrity
from ..atomic import atomic_write
from ..errors import PackedFormatError
from ..models import create_model
from ..quant.bitwidth import FULL_PRECISION, format_bits, get_bits_list, parse_bits
from ..quant.bn_calibration import add_bits
from ..quant.layers import QuantLayer
from ..quant.schemes import QuantScheme

FORMAT = "adabits-packed-v1"


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Integer codes in [0, 2^bits) -> uint8 bytes holding `bits` bits per code (little-endian bits)."""
    flat = codes.reshape(-1).to(torch.int64).numpy()
    planes = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of `pack_codes`: `count` codes as int64."""
    planes = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy((planes.astype(np.int64) << np.arange(bits)).sum(axis=1))


def _quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}


def _weight_bits_per_entry(layer: QuantLayer) -> list[int]:
    """The weight bits the layer runs at for each entry of its bits_list (its first/last-layer policy applied)."""
    return [layer.runs_at(pair)[0] for pair in layer.bits_list]


def stored_code_bits(scheme: QuantScheme, weight_bits: list[int]) -> list[int]:
    """The bit-widths whose codes a layer stores: the highest alone for a nested scheme, else each one."""
    quantized = sorted({b for b in weight_bits if b < FULL_PRECISION})
    return quantized[-1:] if scheme.nested else quantized


@torch.no_grad()
def save_packed(model: nn.Module, path: str | Path, *, model_name: str | None = None,
                model_kwargs: Mapping[str, Any] | None = None) -> dict:
    """Write `model` (any converted model, with its calibrated bit-widths) to `path`, atomically. Returns a
    summary of what was stored.

    `model_name` and `model_kwargs`: the `create_model(model_name, **model_kwargs)` call that built it, stored
    so that `load_packed(path)` rebuilds it; without them the file loads into a model one passes."""
    layers = _quant_layers(model)
    if not layers:
        raise PackedFormatError("save_packed needs a model with quantized layers (adabits.create_model or "
                                "adabits.quantize_model)")
    if (model_name is None) != (model_kwargs is None):
        raise PackedFormatError("save_packed takes model_name and model_kwargs together (the create_model call "
                                "that built the model), or neither")
    model_kwargs = model_kwargs or {}
    all_bits = [parse_bits(b) for b in get_bits_list(model)]
    built_bits = [parse_bits(b) for b in model_kwargs.get("bits_list", ())] if model_name else all_bits
    if all_bits[: len(built_bits)] != built_bits:
        raise PackedFormatError(f"model_kwargs bits_list {model_kwargs.get('bits_list')} is not the start of the "
                         f"model's bits_list {get_bits_list(model)}")
    tensors: dict[str, Tensor] = {}
    weight_keys = set()
    layout: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        per_entry = _weight_bits_per_entry(layer)
        code_bits = stored_code_bits(layer.weight_scheme, per_entry)
        shape = list(layer.weight_codes(code_bits[0]).shape) if code_bits else list(layer.weight.shape)
        for b in code_bits:
            tensors[f"{name}.weight_codes.{b}"] = pack_codes(layer.weight_codes(b), b)
        if FULL_PRECISION in per_entry or not code_bits:
            tensors[f"{name}.weight"] = layer.weight.detach().float().clone()
        if layer.rescale:
            tensors[f"{name}.sat_scale"] = torch.stack([layer.weight_sat_scale(b).cpu() for b in per_entry])
        if layer.per_channel:
            tensors[f"{name}.channel_scale"] = layer.weight_channel_scale().detach().cpu().clone()
        weight_keys.add(f"{name}.weight")
        layout[name] = {"scheme": layer.weight_quant_scheme, "code_bits": code_bits, "weight_bits": per_entry,
                        "shape": shape}
    for key, value in model.state_dict().items():
        if key not in weight_keys:
            tensors[key] = value.detach().clone().contiguous()
    built = dict(model_kwargs)
    metadata = {
        "format": FORMAT,
        "model_name": model_name or "",  # none: a model of one's own, loaded with load_packed(path, model=...)
        "model_kwargs": json.dumps(built),
        "bits_list": json.dumps([format_bits(p) for p in all_bits]),
        "calibrated_bits": json.dumps([format_bits(p) for p in all_bits[len(built_bits):]]),
        "layers": json.dumps(layout),
    }
    metadata[integrity.CHECKSUM_KEY] = integrity.packed_checksums(tensors, metadata)
    with atomic_write(path) as f:
        f.write(safetensors.torch.save(tensors, metadata=metadata))
    return {"layers": len(layers), "schemes": sorted({v["scheme"] for v in layout.values()}),
            "bytes": Path(path).stat().st_size}


class StoredCodes(nn.Module):
    """A quantized layer's weight as the integer codes of a packed file (`QuantLayer.use_stored_weight`).

    Holds the codes of each stored bit-width (a nested scheme's lower bit-widths are right shifts
    of its highest) and the SAT scale of each weight bit-width, as buffers, so `.to(device)`
    moves them; the layer turns them into its weight with its own scheme.
    """

    def __init__(self, scheme: QuantScheme, codes: Mapping[int, Tensor], sat_scales: Mapping[int, Tensor],
                 channel_scale: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("channel_scale_", None if channel_scale is None else channel_scale.float(),
                             persistent=False)
        self.nested = scheme.nested
        self.code_bits = tuple(sorted(codes))
        self.sat_bits = tuple(sorted(sat_scales))
        for b, value in codes.items():
            self.register_buffer(f"codes_{b}", value.to(torch.uint8 if b <= 8 else torch.int32), persistent=False)
        for b, value in sat_scales.items():
            self.register_buffer(f"sat_{b}", value.reshape(()).float(), persistent=False)

    def codes(self, bits: int) -> Tensor:
        stored = min((b for b in self.code_bits if b >= bits), default=None)
        if stored is None or (stored != bits and not self.nested):
            raise PackedFormatError(f"no stored weight codes for {bits} bits (stored: {list(self.code_bits)})")
        return getattr(self, f"codes_{stored}").to(torch.int64) >> (stored - bits)

    def sat_scale(self, bits: int) -> Tensor:
        if bits not in self.sat_bits:
            raise PackedFormatError(f"no stored SAT scale for {bits} bits (stored: {list(self.sat_bits)})")
        return getattr(self, f"sat_{bits}")

    def channel_scale(self) -> Tensor:
        scale = self.channel_scale_
        if not isinstance(scale, Tensor):
            raise PackedFormatError("no stored channel scale: this layer's weight is not quantized per channel")
        return scale

    def extra_repr(self) -> str:
        return f"code_bits={list(self.code_bits)}"


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise PackedFormatError(f"packed model not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise PackedFormatError(f"{path} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise PackedFormatError(f"{path} is not a packed adabits model (no '{FORMAT}' marker in its metadata)")
    return tensors, metadata


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _check_layout(name: str, info: Any, layer: QuantLayer, path: Path) -> dict[str, Any]:
    """The file's entry for one layer, which must describe that layer exactly: scheme, bit-widths, weight shape."""
    if not isinstance(info, dict) or not all(_is_int_list(info.get(k)) for k in ("code_bits", "weight_bits", "shape")):
        raise PackedFormatError(f"{path}: the layout of layer {name} is malformed (expected a scheme and the lists "
                                f"code_bits, weight_bits, shape), got {str(info)[:200]}")
    if info.get("scheme") != layer.weight_quant_scheme:
        raise PackedFormatError(f"{path}: layer {name} stores {info.get('scheme')!r} codes, but the model it "
                                f"describes quantizes with {layer.weight_quant_scheme!r}")
    weight_bits = _weight_bits_per_entry(layer)
    expected = {"weight_bits": weight_bits, "code_bits": stored_code_bits(layer.weight_scheme, weight_bits),
                "shape": list(layer.weight.shape)}
    for key, value in expected.items():
        if info[key] != value:
            raise PackedFormatError(f"{path}: layer {name} is stored with {key} {info[key]}, but the model it "
                                    f"describes has {key} {value}")
    return info


def _stored_codes(name: str, info: dict[str, Any], layer: QuantLayer, tensors: dict[str, Tensor],
                  path: Path) -> StoredCodes:
    """The codes and SAT scales of one layer (layout checked by `_check_layout`), taken out of the file's tensors."""
    count = int(np.prod(info["shape"]))
    codes = {}
    for b in info["code_bits"]:
        packed = tensors.pop(f"{name}.weight_codes.{b}", None)
        size = -(-count * b // 8)
        if packed is None or packed.dtype != torch.uint8 or packed.numel() != size:
            found = "missing" if packed is None else f"{packed.numel()} values of {packed.dtype}"
            raise PackedFormatError(f"{path}: layer {name} has malformed {b}-bit codes ({found}; expected {size} "
                                    f"uint8 bytes for weight shape {info['shape']})")
        codes[b] = unpack_codes(packed.reshape(-1), b, count).reshape(info["shape"])
    sat = tensors.pop(f"{name}.sat_scale", None)
    wanted = len(info["weight_bits"]) if layer.rescale else 0
    if (0 if sat is None else sat.numel()) != wanted:
        raise PackedFormatError(f"{path}: layer {name} stores {0 if sat is None else sat.numel()} SAT scales, "
                                f"expected {wanted} (one per weight bit-width when it rescales)")
    sat_scales = dict(zip(info["weight_bits"], sat.reshape(-1))) if sat is not None else {}
    channel = tensors.pop(f"{name}.channel_scale", None)
    channels = info["shape"][0] if info["shape"] else 0
    if layer.per_channel != (channel is not None) or (channel is not None and channel.numel() != channels):
        found = "none" if channel is None else f"{channel.numel()} values"
        expected = f"{channels} (one per output channel)" if layer.per_channel else "none"
        raise PackedFormatError(f"{path}: layer {name} stores channel scales: {found}; expected {expected}")
    return StoredCodes(layer.weight_scheme, codes, sat_scales, channel)


def _metadata(meta: dict[str, str], path: Path) -> tuple[str, dict[str, Any], list[Any], dict[str, Any]]:
    """(model name, model kwargs, calibrated bit-widths, layer layout) from the file's metadata."""
    try:
        parsed = (meta["model_name"], json.loads(meta["model_kwargs"]), json.loads(meta["calibrated_bits"]),
                  json.loads(meta["layers"]))
    except (KeyError, ValueError) as exc:
        raise PackedFormatError(f"{path}: its metadata is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    for key, value, kind in zip(("model_kwargs", "calibrated_bits", "layers"), parsed[1:], (dict, list, dict)):
        if not isinstance(value, kind):
            raise PackedFormatError(f"{path}: its metadata {key} is a {type(value).__name__}, not a {kind.__name__}")
    return parsed


def _model_for(path: Path, meta: dict[str, str], model_name: str, model_kwargs: dict[str, Any],
               calibrated: list[Any], model: nn.Module | None) -> nn.Module:
    """The model the file's weights go into: `model`, grown to the file's bit-widths, or the one its recipe builds."""
    if model is None and not model_name:
        raise PackedFormatError(f"{path} holds a model of one's own (no registry name to rebuild it from): "
                                "load it into the model built the same way, load_packed(path, model=...)")
    try:
        if model is None:
            model = create_model(model_name, **model_kwargs)
            for bits in calibrated:
                add_bits(model, bits)
            return model
        stored = [parse_bits(b) for b in json.loads(meta.get("bits_list", "[]"))]
        has = [parse_bits(b) for b in get_bits_list(model)]
        if has != stored[: len(has)]:
            raise PackedFormatError(f"{path} stores bit-widths {[format_bits(b) for b in stored]}; the model given "
                                    f"runs at {[format_bits(b) for b in has]}, not the start of them")
        for bits in stored[len(has):]:  # bit-widths calibrated after the model was built
            add_bits(model, format_bits(bits))
        return model
    except PackedFormatError:
        raise
    except (ValueError, TypeError) as exc:
        raise PackedFormatError(f"{path}: its metadata does not build a model ({exc})") from None


def load_packed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """The model stored by `save_packed`, in eval mode; it runs at every stored bit-width.

    Without `model` it is rebuilt from the file's registry name and arguments; with `model` (built as the
    stored one was: same layers, schemes and bit-widths, or their start) the file's weights replace its own,
    in place, and it is returned. The checksums in the metadata are verified first
    (`adabits.integrity.verify_packed`; a file written before they were stored is not checked), then every
    layer's layout against the model.
    """
    path = Path(path)
    tensors, meta = _read(path)
    integrity.verify_packed(tensors, meta, path)
    model_name, model_kwargs, calibrated, layout = _metadata(meta, path)
    described = "the model given" if model is not None else f"model {model_name}"
    model = _model_for(path, meta, model_name, model_kwargs, calibrated, model)
    layers = _quant_layers(model)
    if set(layers) != set(layout):
        raise PackedFormatError(f"{path}: its layers do not match {described} "
                                f"(missing: {sorted(set(layers) - set(layout))[:5]}, extra: {sorted(set(layout) - set(layers))[:5]})")
    for name, layer in layers.items():
        stored = _stored_codes(name, _check_layout(name, layout[name], layer, path), layer, tensors, path)
        layer.use_stored_weight(stored, keep_float_weight=f"{name}.weight" in tensors)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise PackedFormatError(f"{path} does not fit {described}: {str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not (k.endswith(".weight") and k[: -len(".weight")] in layers)]
    if missing or unexpected:
        raise PackedFormatError(f"{path} does not fit {described}: missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}")
    return model.eval()
