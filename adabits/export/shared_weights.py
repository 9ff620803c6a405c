"""One copy of the weights for every bit-width of an ONNX folder.

The nested weight schemes (`modified`, `centered`: `QuantScheme.nested`) give a layer's b-bit code as its
B-bit code shifted right by B - b bits. So the folder stores each such layer's codes K once, at the highest
bit-width any of its files runs the layer at (uint8, in one external-data file every graph points to), and
each graph derives its own int8 weight from them:

    W[c] = multiplier[c] * (2 floor(K / 2^(B - b)) + shift_b) / g_b

(`QuantScheme.signed`: shift_b = 2 offset - 2^b, g_b = 2 when it is even; the multiplier is what the
all-integer graph multiplies a channel's codes by, one in the quantize/dequantize graph). The graph
computes it with Cast, Div, Floor, Mul, Add and Cast on constants only, which ONNX Runtime and OpenVINO fold
into one constant when the session is created, so the session runs what the file with its own copy ran.

An initializer is replaced only where the derivation reproduces it (checked here, in numpy: exactly for
integer codes, up to float32 rounding of the product for the float classifier of the all-integer graph), and
a layer only where the copies it saves outweigh its derivation nodes. The others keep their own copy and are
named in the result: weights requantized from 9-bit codes, schemes that are not nested (`original`), and
MatMulNBits' packed blocks (OpenVINO reads only a constant MatMulNBits weight).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..quant.assignment import quantized_layers
from ..quant.bitwidth import FULL_PRECISION, use_bits
from ..quant.layers import QuantLayer
from .onnx_graph import FLOAT, save_checked

#: the external-data file of an ONNX folder's shared codes
SHARED_FILE = "weights.bin"
#: an initializer smaller than this keeps its own copy (the derivation's nodes would outweigh it)
MIN_SHARED = 64
#: about what a derivation adds to a file (its nodes and constants, measured on ResNet-20): a layer is shared
#: only where the copies it saves weigh more
DERIVATION_BYTES = 600
#: the initializer types a derivation can write: int8 / uint8 codes, float32 weights
SHAREABLE = (1, 2, 3)  # onnx.TensorProto.FLOAT, UINT8, INT8
#: external data offsets are aligned to this many bytes
ALIGN = 64


@dataclass(frozen=True)
class LayerCodes:
    """A layer's unsigned weight codes at its highest exported bit-width `top`, stored once."""

    name: str
    layer: QuantLayer
    top: int
    codes: np.ndarray  # uint8, the weight's shape

    def signed(self, bits: int) -> tuple[np.ndarray, int, int]:
        """(m, numerator factor, numerator shift): the signed codes at `bits` from the stored ones, and
        m = (2 k_b + shift) / g as (factor, shift) = (2 / g, shift / g)."""
        scheme = self.layer.weight_scheme
        shift = int(2 * scheme.offset - scheme.levels(bits))
        g = 2 if shift % 2 == 0 else 1
        low = self.codes.astype(np.int64) >> (self.top - bits)
        return (2 * low + shift) // g, 2 // g, shift // g


@dataclass
class SharedWeights:
    """What `share_weights` did: the bytes of the folder's ONNX files before and after (with the shared
    file), how many initializers each file now derives, and those that kept their own copy."""

    bytes_before: int
    bytes_after: int
    derived: dict[str, int] = field(default_factory=dict)
    kept: dict[str, list[str]] = field(default_factory=dict)


def nested_codes(model: Any, targets: list[Any]) -> list[LayerCodes]:
    """The codes each nested-scheme layer stores: at the highest weight bit-width of at most 8 bits that any
    of `targets` (bit-widths or assignments) runs it at."""
    tops: dict[str, int] = {}
    layers = quantized_layers(model)
    for target in targets:
        with use_bits(model, target):
            for name, layer in layers.items():
                if layer.weight_bits <= 8 and layer.weight_scheme.nested:
                    tops[name] = max(tops.get(name, 0), layer.weight_bits)
    return [LayerCodes(name, layers[name], top, layers[name].weight_codes(top).cpu().numpy().astype(np.uint8))
            for name, top in tops.items()]


def _channel_factors(stored: np.ndarray, m: np.ndarray) -> np.ndarray | None:
    """Per output channel (axis 0), the factor r with stored == r * m: a positive integer for integer
    weights (exactly), a float32 for float ones (up to float32 rounding, the weight folded in float64); None
    when there is none."""
    rows, codes = stored.reshape(len(stored), -1), m.reshape(len(m), -1)
    pick = np.abs(codes).argmax(axis=1)[:, None]
    code = np.take_along_axis(codes, pick, 1)[:, 0]
    value = np.take_along_axis(rows, pick, 1)[:, 0].astype(np.float64)
    if np.issubdtype(stored.dtype, np.integer):
        factors = np.where(code != 0, value // np.where(code == 0, 1, code), 1)
        exact = (factors >= 1).all() and np.array_equal(rows.astype(np.int64), codes * factors[:, None].astype(np.int64))
        return factors.astype(np.float32) if exact else None
    factors = np.where(code != 0, value / np.where(code == 0, 1, code), 1).astype(np.float32)
    derived = codes.astype(np.float32) * factors[:, None]
    return factors if (np.abs(derived - rows) <= 2 * np.spacing(np.abs(rows))).all() else None


def _match(array: np.ndarray, bits: dict[str, int], codes: list[LayerCodes]) -> tuple[LayerCodes, np.ndarray, bool] | None:
    """The layer whose codes at its bit-width in this graph give `array`: (layer, per-channel factors,
    transposed), or None."""
    for layer in codes:
        b = bits.get(layer.name, FULL_PRECISION)
        if b > layer.top or layer.codes.size != array.size:
            continue
        m = layer.signed(b)[0]
        for transposed, candidate in ((False, array), (True, array.T)):
            if candidate.shape == m.shape:
                factors = _channel_factors(candidate, m)
                if factors is not None:
                    return layer, factors, transposed
    return None


def _derive(graph: Any, name: str, dtype: int, layer: LayerCodes, bits: int, factors: np.ndarray,
            transposed: bool, key: str) -> list[Any]:
    """The nodes writing `name` (of ONNX type `dtype`) from the layer's stored codes: m = factor k_b + shift
    (exact in float32), times the channel factors (one rounding), cast back. `key` makes the names unique."""
    from onnx import helper, numpy_helper

    _, factor, shift = layer.signed(bits)
    channels = factors.reshape(-1, *([1] * (layer.codes.ndim - 1)))
    constants = {f"{key}.d": np.array(2.0 ** (layer.top - bits), np.float32), f"{key}.f": np.array(factor, np.float32),
                 f"{key}.s": np.array(shift, np.float32), f"{key}.c": channels.T if transposed else channels}
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in constants.items())
    codes = _codes_name(layer)
    steps: list[tuple[str, list[str], dict[str, Any]]] = [("Transpose", [codes], {})] if transposed else []
    steps += [("Cast", [], {"to": FLOAT}), ("Div", [f"{key}.d"], {}), ("Floor", [], {}), ("Mul", [f"{key}.f"], {}),
              ("Add", [f"{key}.s"], {}), ("Mul", [f"{key}.c"], {})]
    if dtype != FLOAT:
        steps.append(("Cast", [], {"to": dtype}))
    nodes, value = [], codes
    for i, (op, inputs, attributes) in enumerate(steps):
        out = name if i == len(steps) - 1 else f"{key}.{i}"
        nodes.append(helper.make_node(op, [value, *inputs] if op != "Transpose" else inputs, [out], **attributes))
        value = out
    return nodes


def _codes_name(layer: LayerCodes) -> str:
    return f"codes.{layer.name}"


def _file_bits(model: Any, target: Any) -> dict[str, int]:
    with use_bits(model, target):
        return {name: layer.weight_bits for name, layer in quantized_layers(model).items()}


Match = tuple[Any, LayerCodes, np.ndarray, bool]  # (initializer, layer, channel factors, transposed)


def _matches(proto: Any, bits: dict[str, int], codes: list[LayerCodes]) -> tuple[list[Match], list[str]]:
    """The weight initializers of `proto` that a layer's stored codes give, and the names of those none does."""
    from onnx import numpy_helper

    found, kept = [], []
    for tensor in proto.graph.initializer:
        if tensor.data_type not in SHAREABLE or len(tensor.dims) < 2:
            continue
        array = numpy_helper.to_array(tensor)
        if array.size < MIN_SHARED:
            continue
        match = _match(array, bits, codes)
        if match is None:
            kept.append(tensor.name)
        else:
            found.append((tensor, *match))
    return found, kept


def _rewrite(proto: Any, matches: list[Match], bits: dict[str, int]) -> None:
    """Replace each matched initializer by the nodes deriving it, ahead of the graph's own nodes."""
    nodes = []
    for i, (tensor, layer, factors, transposed) in enumerate(matches):
        nodes += _derive(proto.graph, tensor.name, tensor.data_type, layer, bits[layer.name], factors, transposed,
                         f"shared{i}")
        proto.graph.initializer.remove(tensor)
    own = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend([*nodes, *own])


def share_weights(model: Any, folder: str | Path, targets: list[Any]) -> SharedWeights:
    """Rewrite the ONNX folder `folder` (written by `export_model` for `targets`, in its manifest's order) so
    that every weight a nested layer's stored codes give in several of its files is derived from one copy in
    `SHARED_FILE`, where that saves bytes. A folder where no layer's does is left as it is."""
    import onnx
    from onnx import numpy_helper

    from ..runtime import ONNX_MANIFEST

    folder = Path(folder)
    manifest = json.loads((folder / ONNX_MANIFEST).read_text())
    files = list(manifest["files"].values())
    before = sum((folder / f).stat().st_size for f in files)
    codes = nested_codes(model, targets)
    found = {}
    for target, file in zip(targets, files):
        bits = _file_bits(model, target)
        proto = onnx.load(str(folder / file))
        found[file] = (proto, bits, *_matches(proto, bits, codes))
    uses = Counter(name for _, _, matches, _ in found.values() for name in {m[1].name for m in matches})  # files per layer
    stored = [layer for layer in codes
              if (uses[layer.name] - 1) * layer.codes.nbytes > uses[layer.name] * DERIVATION_BYTES]
    shared = {layer.name for layer in stored}
    result = SharedWeights(before, before)
    for file, (_, _, matches, kept) in found.items():
        result.kept[file] = kept + [m[0].name for m in matches if m[1].name not in shared]
        result.derived[file] = sum(m[1].name in shared for m in matches)
    if not stored:
        (folder / SHARED_FILE).unlink(missing_ok=True)  # an earlier export's, which no file reads now
        return result
    offsets = _write_codes(folder / SHARED_FILE, stored)
    for file, (proto, bits, matches, _) in found.items():
        chosen = [m for m in matches if m[1].name in shared]
        layers = list({m[1].name: m[1] for m in chosen}.values())
        _rewrite(proto, chosen, bits)
        inline = onnx.ModelProto()
        inline.CopyFrom(proto)
        inline.graph.initializer.extend(numpy_helper.from_array(layer.codes, _codes_name(layer)) for layer in layers)
        proto.graph.initializer.extend(_external(layer, *offsets[layer.name]) for layer in layers)
        save_checked(proto, folder / file, checked=inline)
    manifest["shared_weights"] = SHARED_FILE
    with atomic_write(folder / ONNX_MANIFEST) as f:
        f.write(json.dumps(manifest, indent=2).encode())
    result.bytes_after = sum((folder / f).stat().st_size for f in [*files, SHARED_FILE])
    return result


def _write_codes(path: Path, layers: list[LayerCodes]) -> dict[str, tuple[int, int]]:
    """Every layer's codes in one file, each at an ALIGN-byte offset: {layer: (offset, length)}."""
    offsets, chunks, position = {}, [], 0
    for layer in layers:
        data = np.ascontiguousarray(layer.codes).tobytes()
        padding = -position % ALIGN
        chunks += [bytes(padding), data]
        position += padding
        offsets[layer.name] = (position, len(data))
        position += len(data)
    with atomic_write(path) as f:
        f.write(b"".join(chunks))
    return offsets


def _external(layer: LayerCodes, offset: int, length: int) -> Any:
    """The initializer of a layer's codes, its data in SHARED_FILE."""
    from onnx import TensorProto

    tensor = TensorProto(name=_codes_name(layer), data_type=TensorProto.UINT8, dims=layer.codes.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", SHARED_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor
