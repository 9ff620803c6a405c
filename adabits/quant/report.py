"""What a converted model quantizes: one row per layer that holds weights, and the float paths left.

`conversion_report(model)` reads the converted layers themselves (their bit-widths and clipping side
come from `QuantLayer.runs_at` and `QuantLayer.clipping_side`), so it describes any model, converted by
`quantize_model` or built quantized. A float path is a module that multiplies with a weight of two or
more dimensions and is not quantized (`_has_matrix_weight`): `quantize_model` warns naming each one the user did not exclude.
A module whose weight is not multiplied (a position embedding, added) says so with a class attribute
`float_by_design = "why"`, and gets a row with that reason instead of the warning.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from .attention import QMultiheadAttention
from .bitwidth import FULL_PRECISION, bits_text, format_bits
from .layers import QuantLayer
from .norms import SwitchableNorm, SwitchNorm

#: float by design: normalization layers scale and shift per channel, as SAT and AdaBits leave BN
NORMALIZATION = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    quantized: bool
    why: str  # for a float layer, why it stays float
    float_path: bool = False  # computes with a float weight that has no quantized twin, not excluded
    weight_bits: str = ""
    act_bits: str = ""
    clipping: str = ""
    drift: str = ""  # per bit-width, how far the output moved from the float layer's (after calibration)
    now: str = ""  # under a per-layer assignment, the bit-width the layer runs at now


@dataclass(frozen=True)
class ConversionReport:
    rows: tuple[LayerRow, ...]

    @property
    def float_paths(self) -> list[str]:
        """The layers that multiply with a float weight and were not excluded on purpose."""
        return [row.name for row in self.rows if row.float_path]

    def __str__(self) -> str:
        header: tuple[str, ...] = ("layer", "type", "quantized", "weight bits", "input bits", "clipping",
                                   "output drift", "note")
        lines: list[tuple[str, ...]] = [(r.name or "(model)", r.kind, "yes" if r.quantized else "no", r.weight_bits,
                                         r.act_bits, r.clipping, r.drift, r.why) for r in self.rows]
        if any(r.now for r in self.rows):  # a per-layer assignment: what each layer runs at now
            header = (*header[:5], "bits now", *header[5:])
            lines = [(*line[:5], row.now, *line[5:]) for line, row in zip(lines, self.rows)]
        widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
        out = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *lines)]
        out.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(out)


def _bits(values: Iterable[int]) -> str:
    unique = list(dict.fromkeys(values))
    return ", ".join("float" if b >= FULL_PRECISION else str(b) for b in unique)


def _quantized_row(name: str, layer: QuantLayer, mixed: bool) -> LayerRow:
    pairs = [layer.runs_at(bits) for bits in layer.bits_list]
    drift = ", ".join(f"{bits}: {value:.1%}" for bits, value in layer.output_drift.items())
    return LayerRow(name, type(layer).__name__, True, "", weight_bits=_bits(w for w, _ in pairs),
                    act_bits=_bits(a for _, a in pairs), clipping=layer.clipping_side, drift=drift,
                    now=bits_text(format_bits(layer.runs_at(layer.bits))) if mixed else "")


def _has_matrix_weight(module: nn.Module) -> bool:
    """A parameter of two or more dimensions that the module multiplies with: any such parameter of a leaf
    module (nn.Embedding, nn.Conv1d), or one named `weight` of a container. A container's other tensors (a
    ViT's class token and position embedding) are added to activations, not multiplied."""
    leaf = next(module.children(), None) is None
    return any(p.dim() >= 2 and (leaf or name.endswith("weight")) for name, p in module.named_parameters(recurse=False))


def conversion_report(model: nn.Module, excluded: Iterable[str] = ()) -> ConversionReport:
    """Every layer of `model` that holds weights: quantized (bits, clipping side) or float and why.

    `excluded` names the layers the user kept in float on purpose (`layer_options {name: {quantize: False}}`).
    """
    excluded = set(excluded)
    rows = []
    mixed = len({m.bits for m in model.modules() if isinstance(m, QuantLayer)}) > 1
    inside_float_attention = [f"{n}." for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    switchable_norms = [f"{n}." for n, m in model.named_modules() if isinstance(m, SwitchableNorm)]
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside_float_attention + switchable_norms):
            continue  # out_proj of a float attention, the copies inside a switchable norm: part of its row
        if isinstance(module, QuantLayer):
            rows.append(_quantized_row(name, module, mixed))
        elif isinstance(module, QMultiheadAttention):
            continue  # its four projections have rows of their own
        elif isinstance(module, SwitchableNorm):
            shared = module.shared
            labels = "shared" if shared else ", ".join(bits_text(b) for b in module.bits_list)
            kind = f"SwitchNorm({type(module.active).__name__})" if isinstance(module, SwitchNorm) else type(module).__name__
            rows.append(LayerRow(name, kind, False, f"normalization, one per bit-width: {labels}"))
        elif isinstance(module, NORMALIZATION) and any(True for _ in module.parameters(recurse=False)):
            rows.append(LayerRow(name, type(module).__name__, False, "normalization, float by design"))
        elif isinstance(getattr(module, "float_by_design", None), str):  # a module that says why it stays float
            rows.append(LayerRow(name, type(module).__name__, False, module.float_by_design))
        elif _has_matrix_weight(module):
            if name in excluded:
                rows.append(LayerRow(name, type(module).__name__, False, "excluded (layer_options)"))
            else:
                rows.append(LayerRow(name, type(module).__name__, False, "no quantized twin: computes in float",
                                     float_path=True))
    return ConversionReport(tuple(rows))
