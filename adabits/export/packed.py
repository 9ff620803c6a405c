"""One safetensors file for every bit-width: each weight stored once, as bit-packed integer codes.

For the nested weight schemes (`modified`, `centered`, SPEC section 1) the b-bit code of a weight is
its B-bit code shifted right by B - b bits, so a layer stores only the codes of its highest weight
bit-width B, packed B bits per weight, and derives every lower one at load time. `original`
(DoReFa, round(x (2^b - 1))) is not nested: such a layer stores the packed codes of every weight
bit-width it runs at. A layer that also runs at full precision stores its float weight as well.
Everything that is not a quantized weight (per-bit BN, per-bit alpha, biases) is stored as float
tensors, and the SAT scale of every (layer, bit-width) is stored as computed by the float model.

`load_packed(path)` rebuilds the model from the file's metadata with `adabits.create_model` and
gives the fake-quant model's logits at every stored bit-width (bit-exact: the same float operations
turn the same codes into the same weights).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..models import create_model
from ..quant.bitwidth import FULL_PRECISION, format_bits, get_bits_list, parse_bits, use_bits
from ..quant.calibrate import add_bits
from ..quant.functional import _codes_to_unit, normalize_weight, quantize_codes, quantize_weight, sat_scale
from ..quant.layers import QConv2d, QLinear, QuantLayerMixin

FORMAT = "adabits-packed-v1"
NESTED_SCHEMES = ("modified", "centered")


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Integer codes in [0, 2^bits) -> uint8 bytes holding `bits` bits per code (little-endian bits)."""
    flat = codes.reshape(-1).to(torch.int64).numpy()
    planes = ((flat[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of `pack_codes`: `count` codes as int64."""
    planes = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    return torch.from_numpy((planes.astype(np.int64) << np.arange(bits)).sum(axis=1))


def weight_codes(weight: Tensor, bits: int, scheme: str) -> Tensor:
    """The integer codes k that `quantize_weight(weight, bits, scheme)` uses (SPEC sections 1-2)."""
    unit = (normalize_weight(weight.detach().float()) + 1) / 2
    return quantize_codes(unit, bits, scheme).to(torch.int64)


def codes_to_weight(codes: Tensor, bits: int, scheme: str) -> Tensor:
    """2 q - 1 from the codes, with the same float operations as the fake-quant forward."""
    return 2 * _codes_to_unit(codes.float(), bits, scheme) - 1


def _weight_bits_per_entry(model: nn.Module, layers: Mapping[str, QuantLayerMixin]) -> dict[str, list[int]]:
    """For every quantized layer, its effective weight bits at each entry of the bits_list."""
    table: dict[str, list[int]] = {name: [] for name in layers}
    for bits in get_bits_list(model):
        with use_bits(model, bits):
            for name, layer in layers.items():
                table[name].append(layer.weight_bits)
    return table


def _sat_scale(layer: QuantLayerMixin, weight_bits: int) -> Tensor:
    """The SAT scale the fake-quant forward multiplies this layer's weight by at `weight_bits`."""
    quantized = quantize_weight(layer.weight, weight_bits, layer.weight_quant_scheme, layer.clamp)
    return sat_scale(quantized, layer.weight, layer.fan_out, layer.rescale_type).reshape(()).float()


def _quant_layers(model: nn.Module) -> dict[str, QuantLayerMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLayerMixin)}


def _stored_code_bits(scheme: str, weight_bits: list[int]) -> list[int]:
    quantized = sorted({b for b in weight_bits if b < FULL_PRECISION})
    if scheme in NESTED_SCHEMES:
        return quantized[-1:]
    return quantized


@torch.no_grad()
def save_packed(model: nn.Module, path: str | Path, *, model_name: str, model_kwargs: Mapping[str, Any]) -> dict:
    """Write `model` (a switchable model built by `create_model(model_name, **model_kwargs)`, plus
    any calibrated bit-widths) to `path`, atomically. Returns a summary of what was stored."""
    layers = _quant_layers(model)
    if not layers:
        raise ValueError("save_packed needs a model with quantized layers (adabits.create_model)")
    built_bits = [parse_bits(b) for b in model_kwargs.get("bits_list", ())]
    all_bits = [parse_bits(b) for b in get_bits_list(model)]
    if all_bits[: len(built_bits)] != built_bits:
        raise ValueError(f"model_kwargs bits_list {model_kwargs.get('bits_list')} is not the start of the "
                         f"model's bits_list {get_bits_list(model)}")
    per_entry = _weight_bits_per_entry(model, layers)
    tensors: dict[str, Tensor] = {}
    weight_keys = set()
    layout: dict[str, dict[str, Any]] = {}
    for name, layer in layers.items():
        scheme = layer.weight_quant_scheme
        code_bits = _stored_code_bits(scheme, per_entry[name])
        for b in code_bits:
            tensors[f"{name}.weight_codes.{b}"] = pack_codes(weight_codes(layer.weight, b, scheme), b)
        if FULL_PRECISION in per_entry[name] or not code_bits:
            tensors[f"{name}.weight"] = layer.weight.detach().float().clone()
        if layer.rescale:
            tensors[f"{name}.sat_scale"] = torch.stack([_sat_scale(layer, b) for b in per_entry[name]])
        weight_keys.add(f"{name}.weight")
        layout[name] = {"scheme": scheme, "code_bits": code_bits, "weight_bits": per_entry[name],
                        "shape": list(layer.weight.shape)}
    for key, value in model.state_dict().items():
        if key not in weight_keys:
            tensors[key] = value.detach().clone().contiguous()
    built = dict(model_kwargs)
    metadata = {
        "format": FORMAT,
        "model_name": model_name,
        "model_kwargs": json.dumps(built),
        "bits_list": json.dumps([format_bits(p) for p in all_bits]),
        "calibrated_bits": json.dumps([format_bits(p) for p in all_bits[len(built_bits):]]),
        "layers": json.dumps(layout),
    }
    _save_atomic(tensors, metadata, Path(path))
    return {"layers": len(layers), "schemes": sorted({v["scheme"] for v in layout.values()}),
            "bytes": Path(path).stat().st_size}


def _save_atomic(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise



class PackedWeightMixin:
    """A quantized layer whose weights come from stored integer codes instead of a float weight.

    Only `quantized_weight` changes; forward, bit switching, BN and alpha stay the library's.
    The codes (one buffer per stored bit-width, `codes_<b>`) and the per-entry SAT scales
    (`sat_scales`) are buffers, so `.to(device)` moves them.
    """

    weight_bits: int
    bits_index: int
    code_bits: tuple[int, ...]
    packed_scheme: str

    def quantized_weight(self) -> Tensor:  # type: ignore[override]
        bits = self.weight_bits
        if bits >= FULL_PRECISION:
            return super().quantized_weight()  # type: ignore[misc]  # the stored float weight
        stored = min(b for b in self.code_bits if b >= bits)
        codes = getattr(self, f"codes_{stored}") >> (stored - bits)
        weight = codes_to_weight(codes, bits, self.packed_scheme)
        sat = getattr(self, "sat_scales", None)
        return weight if sat is None else weight * sat[self.bits_index]


class PackedQConv2d(PackedWeightMixin, QConv2d):
    """QConv2d with weights from integer codes (built by `load_packed`)."""


class PackedQLinear(PackedWeightMixin, QLinear):
    """QLinear with weights from integer codes (built by `load_packed`)."""


PACKED_CLASSES: dict[type, type] = {QConv2d: PackedQConv2d, QLinear: PackedQLinear}


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"packed model not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a packed adabits model (no '{FORMAT}' marker in its metadata)")
    return tensors, metadata


def _use_codes(layer: QuantLayerMixin, name: str, info: dict, tensors: dict[str, Tensor]) -> None:
    """Turn a freshly built layer into its packed twin holding the stored codes and SAT scales."""
    layer.__class__ = PACKED_CLASSES[type(layer)]  # same fields, one overridden method
    count = int(np.prod(info["shape"]))
    layer.code_bits = tuple(info["code_bits"])
    layer.packed_scheme = info["scheme"]
    for b in layer.code_bits:
        codes = unpack_codes(tensors.pop(f"{name}.weight_codes.{b}"), b, count).reshape(info["shape"])
        layer.register_buffer(f"codes_{b}", codes.to(torch.uint8 if b <= 8 else torch.int32), persistent=False)
    sat = tensors.pop(f"{name}.sat_scale", None)
    if sat is not None:
        layer.register_buffer("sat_scales", sat, persistent=False)
    if f"{name}.weight" not in tensors:  # never runs at full precision: no float weight kept
        layer.weight = nn.Parameter(torch.empty(0, device=layer.weight.device), requires_grad=False)


def load_packed(path: str | Path) -> nn.Module:
    """Rebuild the model stored by `save_packed`; it runs at every stored bit-width, in eval mode."""
    path = Path(path)
    tensors, meta = _read(path)
    model = create_model(meta["model_name"], **json.loads(meta["model_kwargs"]))
    for bits in json.loads(meta["calibrated_bits"]):
        add_bits(model, bits)
    layout = json.loads(meta["layers"])
    layers = _quant_layers(model)
    if set(layers) != set(layout):
        raise ValueError(f"{path}: its layers do not match model {meta['model_name']} "
                         f"(missing: {sorted(set(layers) - set(layout))[:5]}, extra: {sorted(set(layout) - set(layers))[:5]})")
    for name, layer in layers.items():
        _use_codes(layer, name, layout[name], tensors)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not (k.endswith(".weight") and k[: -len(".weight")] in layers)]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit model {meta['model_name']}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
