"""`adabits.export_model`: any converted model to an ExecuTorch `.pte`, ONNX or a packed file, one call,
no registry name needed.

The graph of each bit-width of at most 8 bits is the all-integer one (`integer_graph.py`: integer
kernels for every conv and linear between the first and the classifier, 8-bit grids calibrated on
images) where its rules cover the model and calibration images are given, else the
quantize/dequantize one (`qdq.py`: the model's own ops traced by torch.export, each quantized layer
on its own grids, the model's arithmetic up to float rounding). `graph` forces either; which ops each
takes is one table, `op_rules.py`. A bit-width of 32 (`bits=32`) is written as the float graph (the
quantize/dequantize form with nothing to quantize). `format="packed"` writes every bit-width as
bit-packed integer codes (`packed.py`).

The `adabits export` command reads the run's config and calls this (engine/deploy.py).

The issue's name for this call is `adabits.export(...)`; it is `adabits.export_model(...)` because
`adabits.export` is this subpackage, whose `load_packed` / `save_packed` imports
(`from adabits.export import load_packed`) a function of that name would shadow.

`graph="mixed"` (the earlier ONNX graph with its `bias=` modes) is retired: `graph="integer"` is the
deployment form, `graph="qdq"` the check against the model (float bias, what `bias=float` gave), and
`bits=32` the float graph.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from ..errors import BitWidthError, ExportError
from ..quant.assignment import layer_pairs, mean_weight_bits
from ..quant.bitwidth import (
    FULL_PRECISION,
    BitPair,
    Bits,
    NamedAssignment,
    bits_text,
    format_bits,
    get_bits_list,
    parse_bits,
    use_bits,
)
from ..quant.calibration import calibration_inputs
from .int8_layer import PAIR_PRODUCT_LIMIT
from .nbits_linear import ACCURACY_LEVEL, check_accuracy_level

Format = Literal["pte", "onnx", "packed"]
Graph = Literal["auto", "integer", "qdq"]
FORMATS: tuple[str, ...] = ("pte", "onnx", "packed")
GRAPHS: tuple[str, ...] = ("auto", "integer", "qdq")
#: what replaced the retired graph form
MIXED_RETIRED = ("graph='mixed' was retired: use graph='integer' (every conv and residual add an integer kernel), "
                 "graph='qdq' (each layer on its own grids with a float bias: the model's arithmetic up to float "
                 "rounding, what bias='float' checked) or bits=32 (the float graph)")


@dataclass(frozen=True)
class Exported:
    """What `export_model` wrote: the file (or ONNX folder), its bit-widths, which graph (`integer`, `qdq`,
    `float`, joined by `+` when bit-widths differ; `packed`) and why, and notes of what the graph had to
    change (9-bit weight codes kept as float or requantized, per layer)."""

    path: Path
    bits: Sequence[Target]
    graph: str
    how: str
    notes: list[str] = field(default_factory=list)


#: what export writes one graph of: a bit-width of the model, or a named per-layer assignment
Target = Union[Bits, NamedAssignment]


def _integer(pairs: Sequence[BitPair]) -> bool:
    """Weights and activations of every layer at most 8 bits: int8 kernels take it."""
    return all(max(pair) <= 8 for pair in pairs)


def _exportable(pair: BitPair) -> bool:
    """Weight and activation bits each at most 8 (int8 codes) or 32 (float)."""
    return all(b <= 8 or b >= FULL_PRECISION for b in pair)


def _chosen_bits(model: nn.Module, bits: Bits | Sequence[Bits] | None) -> list[Bits]:
    """`bits` (one, or a list), each a bit-width of the model that export takes; by default every one of at
    most 8 bits (the float one when the model has no other)."""
    own = get_bits_list(model)
    exportable = [b for b in own if _exportable(parse_bits(b))]
    if bits is None:
        chosen = [b for b in exportable if _integer([parse_bits(b)])] or exportable
        if not chosen:
            raise ExportError(f"export takes bit-widths of at most 8 bits, or 32 (the float graph); this model has "
                              f"{bits_text(own, 'config')}")
        return chosen
    chosen = [bits] if isinstance(bits, (int, tuple)) else list(bits)
    for b in chosen:
        pair = parse_bits(b)
        if not _exportable(pair):
            raise ExportError(f"export takes bits <= 8 (int8 codes) or 32 (the float graph); got "
                              f"{bits_text(b, 'config')}")
        if pair not in [parse_bits(o) for o in own]:
            raise BitWidthError(f"bits={bits_text(b, 'config')} is not a bit-width of this model; allowed: "
                                f"{', '.join(bits_text(o, 'config') for o in own)}")
    return chosen


def _named(model: nn.Module, assignments: Mapping[str, Mapping[str, Bits]] | None) -> list[NamedAssignment]:
    """Each assignment under its name, checked against the model (every layer at a bit-width it has, each at
    most 8 bits or 32)."""
    named = [NamedAssignment(name, layers) for name, layers in (assignments or {}).items()]
    for assignment in named:
        for pair in layer_pairs(model, assignment):
            if not _exportable(pair):
                raise ExportError(f"assignment {assignment.name}: export takes bits <= 8 (int8 codes) or 32 (float) "
                                  f"per layer; got {bits_text(format_bits(pair), 'config')}")
    return named


def _input_shape(example: Tensor | Sequence[int] | None, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if example is not None and input_shape is not None:
        raise ExportError("pass example= or input_shape= (its earlier name), not both")
    given = example if example is not None else input_shape
    if given is None:
        raise ExportError("a pte or onnx export needs example=: a batch of inputs as the model takes them, or one "
                          "input's shape without the batch, e.g. (3, 32, 32)")
    if isinstance(given, Tensor):
        if given.dim() < 2:
            raise ExportError(f"example= is a batch of inputs (N, ...); got a tensor of shape {tuple(given.shape)}")
        return tuple(int(d) for d in given.shape[1:])
    return tuple(int(d) for d in given)


def _images(calibration: Tensor | Iterable[Any]) -> Tensor:
    return calibration if isinstance(calibration, Tensor) else torch.cat(calibration_inputs(calibration))


def _packed(model: nn.Module, path: Path, bits: object, graph: str, model_name: str | None,
            model_kwargs: Mapping[str, Any] | None) -> Exported:
    """Every bit-width in one packed file (`packed.save_packed`)."""
    from .packed import save_packed

    if bits is not None:
        raise ExportError("a packed file holds every bit-width of the model; bits= applies to pte and onnx")
    if graph != "auto":
        raise ExportError("graph= applies to pte and onnx; a packed file stores weights, not a graph")
    info = save_packed(model, path, model_name=model_name, model_kwargs=model_kwargs)
    loads = (f"load_packed(path) rebuilds {model_name}" if model_name else
             "load_packed(path, model=...) loads it into the model built the same way")
    how = f"{info['bytes']:,} bytes, bit-packed weight codes ({', '.join(info['schemes'])}); {loads}"
    return Exported(path, get_bits_list(model), "packed", how)


def _integer_graphs(model: nn.Module, order: list[Target], shape: tuple[int, ...], calibration: Tensor | Iterable[Any],
                    format: str, uint8_input: bool, images_are: str) -> tuple[list[Any], str, list[str]]:
    """The all-integer graph of each bit-width; ExportError (a ValueError) where its rules do not cover the model."""
    from .integer_graph import integer_graph

    images = _images(calibration)
    # XNNPACK never saturates a pair of products; ONNX Runtime's kernels on CPUs without VNNI can
    pair_limit = None if format == "pte" else PAIR_PRODUCT_LIMIT
    graphs = [integer_graph(model, b, shape, images, uint8_input=uint8_input, pair_limit=pair_limit)  # type: ignore[arg-type]
              for b in order]
    notes = [f"at {bits_text(g.bits)}, the 9-bit weight codes of {', '.join(g.requantized_weights)} were "
             "requantized to int8 (per channel)" for g in graphs if g.requantized_weights]
    return graphs, f"all-integer, 8-bit grids calibrated on {len(images)} {images_are}", notes


def _qdq_graphs(model: nn.Module, order: list[Target], shape: tuple[int, ...], format: str,
                uint8_input: bool, accuracy_level: int) -> tuple[list[Any], list[str]]:
    """The quantize/dequantize graph of each bit-width (the float graph at 32 bits)."""
    from .qdq import qdq_model

    graphs = [qdq_model(model, b, shape, uint8_input=uint8_input, int8_weights=format == "onnx",
                        nbits_linear=format == "onnx", accuracy_level=accuracy_level,
                        xnnpack_linear=format == "pte" and accuracy_level == 4) for b in order]
    notes = [f"at {bits_text(g.bits)}, the 9-bit weight codes of {', '.join(g.float_weights)} stay exact float "
             "weights" for g in graphs if g.float_weights]
    return graphs, notes


def _graphs(model: nn.Module, order: list[Target], pairs: Mapping[Target, list[BitPair]], shape: tuple[int, ...], calibration: Tensor | Iterable[Any] | None,
            format: str, graph: str, uint8_input: bool, images_are: str,
            accuracy_level: int) -> tuple[dict[Target, Any], list[str], list[str]]:
    """The graph of each bit-width (all-integer where asked for or where it covers the model and images are
    given; else quantize/dequantize, the float graph at 32 bits), what was written and why, and the notes."""
    integer = [b for b in order if _integer(pairs[b])]
    written: dict[Target, Any] = {}
    hows, notes = [], []
    if integer and graph != "qdq" and calibration is not None:
        try:
            graphs, how, integer_notes = _integer_graphs(model, integer, shape, calibration, format, uint8_input,
                                                         images_are)
            written.update(zip(integer, graphs))
            hows.append(how)
            notes += integer_notes
        except ValueError as exc:  # ExportError is one
            if graph == "integer":
                raise ExportError(f"{format} export: {exc}") from None
            hows.append(f"the all-integer graph does not cover this model ({exc})")
    rest = [b for b in order if b not in written]
    if rest:
        graphs, qdq_notes = _qdq_graphs(model, rest, shape, format, uint8_input, accuracy_level)
        written.update(zip(rest, graphs))
        notes += qdq_notes
        floats = [b for b in rest if _float(pairs[b])]
        if len(floats) < len(rest):
            hows.insert(0, "quantize/dequantize graph traced by torch.export")
        if floats:
            which = f"{', '.join(bits_text(b, 'words') for b in floats)}: " if len(floats) < len(order) else ""
            hows.append(f"{which}the float graph traced by torch.export")
    return written, hows, notes


def export_model(model: nn.Module, path: str | Path, *, format: Format, bits: Bits | Sequence[Bits] | None = None,
                 assignments: Mapping[str, Mapping[str, Bits]] | None = None, example: Tensor | Sequence[int] | None = None, calibration: Tensor | Iterable[Any] | None = None,
                 graph: Graph = "auto", uint8_input: bool = False, model_name: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None, input_shape: Sequence[int] | None = None,
                 images_are: str = "images", accuracy_level: int = ACCURACY_LEVEL,
                 shared_weights: bool = True) -> Exported:
    """Write `model` to `path`: one `.pte` with a method per bit-width; ONNX (a folder with a file per bit-width
    and the manifest `adabits.runtime.load` reads; one file when `bits` is a single bit-width); or one packed
    safetensors file of every bit-width (`format="packed"`).

    pte / onnx: `bits` defaults to every bit-width of at most 8 bits (`bits=[]`: none); 32 writes the float
    graph. `assignments` {name: {layer or pattern: bits}} adds a graph per named per-layer assignment, each
    layer at its own bit-width (`adabits.set_bits`): the method `forward_mixed_<name>`, the file
    `model_mixed_<name>.onnx`, the key `<name>` of `adabits.runtime`. `example` is
    a batch of inputs as the model takes them, or one input's shape without the batch (`input_shape` is its
    earlier name). `calibration` (images, or batches of them) calibrates the all-integer graph's 8-bit grids;
    without it, `graph="auto"` writes the quantize/dequantize graph. `uint8_input`: the model takes raw 0..255
    pixels; `images_are` names the calibration images in `how`. ONNX's quantize/dequantize graph writes its
    linear layers as ONNX Runtime's MatMulNBits where a fast kernel holds their codes (`nbits_linear.py`) at
    `accuracy_level`: 0 (float32 compute, the model's arithmetic; 2- to 4-bit layers) or 4 (int8 compute on the
    input quantized per block at run time, faster and not exact; 2- to 8-bit layers). In a `.pte`,
    `accuracy_level=4` writes linear layers of the quantize/dequantize graph as XNNPACK's int4 / int8 kernels
    on the input quantized per token at run time (`xnnpack_linear.py`); at 0 they compute in float32.
    `shared_weights` (an ONNX folder): the weights of the nested schemes are stored once, at the highest
    bit-width, in the folder's `weights.bin`, and each file derives its own from them (`shared_weights.py`).

    packed: `model_name` and `model_kwargs` (the `create_model` call that built the model) let
    `load_packed(path)` rebuild it; without them, `load_packed(path, model=...)` loads the file into a model
    built the same way. Raises ExportError (one line) for what the chosen form cannot express, ImportError when
    the runtime's exporter is not installed.
    """
    if graph == "mixed":
        raise ExportError(MIXED_RETIRED)
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; allowed: {', '.join(FORMATS)}")
    if graph not in GRAPHS:
        raise ExportError(f"graph must be one of {', '.join(GRAPHS)}; got {graph!r}")
    if accuracy_level != ACCURACY_LEVEL and format == "packed":
        raise ExportError("accuracy_level= applies to format='onnx' and 'pte' (the linear layers' kernels); a packed "
                          "file stores weights")
    check_accuracy_level(accuracy_level)
    target = Path(path)
    if format == "packed":
        return _packed(model, target, bits, graph, model_name, model_kwargs)
    shape = _input_shape(example, input_shape)
    named = _named(model, assignments)
    none_uniform = bits is not None and not isinstance(bits, (int, tuple)) and not list(bits)
    order: list[Target] = [*([] if none_uniform else _chosen_bits(model, bits)), *named]
    if not order:
        raise ExportError("bits= is an empty list and no assignments= are given: nothing to export")
    pairs = {b: layer_pairs(model, b) for b in order}  # every layer's bit-width per target, checked once
    if graph == "integer" and (calibration is None or not all(_integer(pairs[b]) for b in order)):
        raise ExportError("graph='integer' calibrates its 8-bit grids on images (pass calibration=) and takes "
                          "bit-widths of at most 8 bits (32 is the float graph: graph='auto' or 'qdq')")
    written, hows, notes = _graphs(model, order, pairs, shape, calibration, format, graph, uint8_input, images_are,
                                   accuracy_level)
    kinds = [_kind(pairs[b], written[b]) for b in order]
    graphs = [written[b] for b in order]
    weight_bits = [_weight_bits(model, b) for b in order]
    if format == "pte":
        from .pte import export_pte

        export_pte(graphs, target, weight_bits=weight_bits)
    else:
        from .onnx_integer import write_onnx, write_onnx_folder

        single = isinstance(bits, (int, tuple)) and not named
        target = (write_onnx(graphs[0], target) if single else
                  write_onnx_folder(graphs, target, weight_bits, accuracy_level))
        if not single:
            notes += _share(model, target, order) if shared_weights else _unshare(target)
    return Exported(target, [g.bits for g in graphs], "+".join(dict.fromkeys(kinds)), "; ".join(hows), sorted(set(notes)))


def _share(model: nn.Module, folder: Path, order: list[Target]) -> list[str]:
    """Store the folder's nested weights once (`shared_weights.share_weights`); what it did, as a note."""
    from .shared_weights import SHARED_FILE, share_weights

    done = share_weights(model, folder, order)
    if not any(done.derived.values()):
        return []
    kept = sum(len(names) for names in done.kept.values())
    return [f"{SHARED_FILE} stores the weight codes once for every bit-width: {done.bytes_after:,} bytes in all, "
            f"against {done.bytes_before:,} with a copy per file" +
            (f"; {kept} weight tensors keep their own copy (codes that are not nested, requantized or packed, or too small to gain)"
             if kept else "")]


def _unshare(folder: Path) -> list[str]:
    """A folder written with a copy per file keeps no `weights.bin` of an earlier export in the same place."""
    from .shared_weights import SHARED_FILE

    (folder / SHARED_FILE).unlink(missing_ok=True)
    return []


def _weight_bits(model: nn.Module, target: Target) -> float:
    """Bits per weight of `target` (what the runtime ranks methods by)."""
    with use_bits(model, target):
        return round(mean_weight_bits(model), 4)




def _float(pairs: Sequence[BitPair]) -> bool:
    return all(min(pair) >= FULL_PRECISION for pair in pairs)


def _kind(pairs: Sequence[BitPair], graph: Any) -> str:
    from .integer_graph import IntegerGraph

    return "integer" if isinstance(graph, IntegerGraph) else "float" if _float(pairs) else "qdq"
