"""`adabits.export_model`: any converted model to an ExecuTorch `.pte` or ONNX, one call, no registry name needed.

The graph of each bit-width is the all-integer one (`integer_graph.py`: integer kernels for every conv
and linear between the first and the classifier, 8-bit grids calibrated on images) where its rules cover
the model and calibration images are given, else the quantize/dequantize one (`qdq.py`: the model's own
ops traced by torch.export, each quantized layer on its own grids). `graph` forces either. The
`adabits export` command reads the run's config and calls this. (`adabits.export` stays the subpackage:
`adabits.export.load_packed` keeps working.)
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..quant.bitwidth import Bits, bits_label, get_bits_list, parse_bits
from ..quant.calibration import calibration_inputs
from .int8_layer import PAIR_PRODUCT_LIMIT

Format = Literal["pte", "onnx"]
Graph = Literal["auto", "integer", "qdq"]
FORMATS: tuple[str, ...] = ("pte", "onnx")
GRAPHS: tuple[str, ...] = ("auto", "integer", "qdq")


@dataclass(frozen=True)
class Exported:
    """What `export` wrote: the file (or ONNX folder), its bit-widths, which graph and why, and notes of what
    the graph had to change (9-bit weight codes kept as float or requantized, per layer)."""

    path: Path
    bits: list[Bits]
    graph: str
    how: str
    notes: list[str] = field(default_factory=list)


def _integer_bits(model: nn.Module, bits: Bits | Sequence[Bits] | None) -> list[Bits]:
    allowed = [b for b in get_bits_list(model) if max(parse_bits(b)) <= 8]
    chosen = allowed if bits is None else [bits] if isinstance(bits, (int, tuple)) else list(bits)
    outside = [b for b in chosen if b not in allowed]
    if not chosen or outside:
        raise ExportError(f"an integer export takes bit-widths of the model of at most 8 bits ({allowed}); "
                          f"got {outside or chosen}")
    return chosen


def _images(calibration: Tensor | Iterable[Any]) -> Tensor:
    return calibration if isinstance(calibration, Tensor) else torch.cat(calibration_inputs(calibration))


def export_model(model: nn.Module, path: str | Path, *, format: Format, input_shape: Sequence[int],
                 bits: Bits | Sequence[Bits] | None = None, calibration: Tensor | Iterable[Any] | None = None,
                 graph: Graph = "auto", uint8_input: bool = False, images_are: str = "images") -> Exported:
    """Write `model` at `bits` (default: every bit-width of at most 8 bits) to `path`: one `.pte` with a method
    per bit-width, or ONNX (a folder with a file per bit-width and the manifest `adabits.runtime.load` reads;
    one file when `bits` is a single bit-width).

    `input_shape` is one input's shape (C, H, W). `calibration` (images, or batches of them) calibrates the
    all-integer graph's 8-bit grids; without it, `graph="auto"` writes the quantize/dequantize graph.
    `uint8_input`: the model takes raw 0..255 pixels; `images_are` names the calibration images in `how`. Raises ExportError (one line) for what the chosen
    graph cannot express, ImportError when the runtime's exporter is not installed.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; allowed: {', '.join(FORMATS)}")
    if graph not in GRAPHS:
        raise ExportError(f"graph must be one of {', '.join(GRAPHS)}; got {graph!r}")
    order = _integer_bits(model, bits)
    shape = tuple(int(d) for d in input_shape)
    graphs: list[Any] = []
    how, notes, kind = "", [], "integer"
    if graph == "integer" and calibration is None:
        raise ExportError("graph='integer' calibrates its 8-bit grids on images: pass calibration=")
    if graph != "qdq" and calibration is not None:
        from .integer_graph import integer_graph

        images = _images(calibration)
        # XNNPACK never saturates a pair of products; ONNX Runtime's kernels on CPUs without VNNI can
        pair_limit = None if format == "pte" else PAIR_PRODUCT_LIMIT
        try:
            graphs = [integer_graph(model, b, shape, images, uint8_input=uint8_input,  # type: ignore[arg-type]
                                    pair_limit=pair_limit) for b in order]
            how = f"all-integer, 8-bit grids calibrated on {len(images)} {images_are}"
            notes = sorted({f"at {bits_label(g.bits)}, the 9-bit weight codes of {', '.join(g.requantized_weights)} "
                            "were requantized to int8 (per channel)" for g in graphs if g.requantized_weights})
        except ValueError as exc:  # ExportError is one
            if graph == "integer":
                raise ExportError(f"{format} export: {exc}") from None
            graphs, how = [], f"the all-integer graph does not cover this model ({exc})"
    if not graphs:
        from .qdq import qdq_model

        graphs, kind = [qdq_model(model, b, shape, uint8_input=uint8_input, int8_weights=format == "onnx")
                        for b in order], "qdq"
        how = "quantize/dequantize graph traced by torch.export" + (f"; {how}" if how else "")
        notes = sorted({f"at {bits_label(g.bits)}, the 9-bit weight codes of {', '.join(g.float_weights)} stay "
                        "exact float weights" for g in graphs if g.float_weights})
    target = Path(path)
    if format == "pte":
        from .pte import export_pte

        export_pte(graphs, target)
    else:
        from .onnx_integer import write_onnx, write_onnx_folder

        single = bits is not None and len(order) == 1 and isinstance(bits, (int, tuple))
        target = write_onnx(graphs[0], target) if single else write_onnx_folder(graphs, target)
    return Exported(target, [g.bits for g in graphs], kind, how, notes)
