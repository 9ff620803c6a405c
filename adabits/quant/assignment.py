"""Per-layer bit-widths: an assignment maps layer names (or fnmatch patterns) to bit-widths of the model.

    adabits.set_bits(model, {"*": 2, "layers.0.*": 4, "fc": 4})

Every quantized layer (`QuantLayer`) must get a bit-width it was trained or calibrated for; later entries win
where patterns overlap, so a catch-all `"*"` goes first. A pattern that matches no quantized layer, a layer left
without a bit-width, or a bit-width the layer does not have is one BitWidthError naming it, and nothing is
switched.

What the other switchable modules use: each switchable norm, and each residual observer, follows the quantized
layer registered just before it (its own conv: `conv1` -> `bn1`, `downsample.0` -> `downsample.1`,
`features.N.conv.0.0` -> `features.N.conv.0.1`). A BN normalises its conv's output, whose statistics depend on
that conv's weight bits and its input's activation bits, both the conv's own; so every module keeps the state it
was trained with at that bit-width, and a mixed assignment needs no new state.
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

from torch import nn

from ..atomic import atomic_write
from ..errors import BitWidthError
from .bitwidth import (
    FULL_PRECISION,
    BitPair,
    Bits,
    BitSwitchable,
    NamedAssignment,
    format_bits,
    parse_bits,
    switchable_modules,
)
from .layers import QuantLayer

#: an assignment as a user writes it: pattern -> bit-width
Assignment = Mapping[str, Bits]
SHOWN = 4


def quantized_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLayer)}


def resolve(model: nn.Module, assignment: Assignment) -> dict[str, BitPair]:
    """The bit-width of every quantized layer under `assignment`, checked (see the module docstring)."""
    if not isinstance(assignment, Mapping) or not assignment:
        raise BitWidthError("an assignment maps layer names or patterns to bit-widths, e.g. {'*': 4, 'fc': 8}; "
                            f"got {assignment!r}")
    layers = quantized_layers(model)
    chosen: dict[str, BitPair] = {}
    for pattern, bits in assignment.items():
        if not isinstance(pattern, str):
            raise BitWidthError(f"assignment: a layer name or pattern is a string, got {pattern!r}")
        pair = parse_bits(bits)
        matched = [name for name in layers if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise BitWidthError(f"assignment: {pattern!r} matches no quantized layer of {type(model).__name__}; "
                                f"its layers are {_some(list(layers))}")
        for name in matched:
            chosen[name] = pair
    left = [name for name in layers if name not in chosen]
    if left:
        raise BitWidthError(f"assignment leaves {len(left)} quantized layer(s) without a bit-width ({_some(left)}); "
                            "add '*': B first for the rest")
    for name, pair in chosen.items():
        if pair not in layers[name].bits_list:
            allowed = ", ".join(str(format_bits(p)) for p in layers[name].bits_list)
            raise BitWidthError(f"assignment: {name} was not trained or calibrated for bit-width "
                                f"{format_bits(pair)}; allowed: {allowed}")
    return chosen


def module_bits(model: nn.Module, layer_bits: Mapping[str, BitPair]) -> list[tuple[BitSwitchable, BitPair]]:
    """Every switchable module with the bit-width it runs at: quantized layers their own, the others that of
    the quantized layer registered before them (the first layer's, for a module before any)."""
    pairs: list[tuple[BitSwitchable, BitPair]] = []
    before_first: list[BitSwitchable] = []  # modules registered before any quantized layer take the first one's
    last: BitPair | None = None
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer):
            last = layer_bits[name]
            pairs.extend((m, last) for m in before_first)
            before_first = []
            pairs.append((module, last))
        elif isinstance(module, BitSwitchable):
            if last is None:
                before_first.append(module)
            else:
                pairs.append((module, last))
    for module, pair in pairs:
        if pair not in module.bits_list:
            allowed = ", ".join(str(format_bits(p)) for p in module.bits_list)
            raise BitWidthError(f"assignment: a {type(module).__name__} follows a layer at {format_bits(pair)}, "
                                f"which it has no state for; allowed: {allowed}")
    return pairs


def layer_pairs(model: nn.Module, bits: Bits | Assignment | NamedAssignment) -> list[BitPair]:
    """The distinct bit-widths the quantized layers run at under `bits` (one bit-width, an assignment or a
    NamedAssignment), in layer order; an assignment is checked against the model (`resolve`)."""
    if isinstance(bits, NamedAssignment):
        bits = bits.layers
    if isinstance(bits, Mapping):
        return list(dict.fromkeys(resolve(model, bits).values()))
    return [parse_bits(bits)]


def mean_weight_bits(model: nn.Module) -> float:
    """Bits per weight of the quantized layers as they are set now (32 for a float one), weighted by their
    sizes: one number that ranks a mixed assignment beside the uniform bit-widths (`adabits.runtime.pick_bits`)."""
    sizes = [(layer.weight.numel(), layer.weight_bits) for layer in quantized_layers(model).values()]
    total = sum(n for n, _ in sizes)
    return sum(n * b for n, b in sizes) / total if total else float(FULL_PRECISION)


def current(model: nn.Module) -> dict[str, Bits]:
    """Every quantized layer's bit-width now (the assignment `get_bits` returns for a mixed model)."""
    return {name: format_bits(layer.bits) for name, layer in quantized_layers(model).items()}


def is_uniform(model: nn.Module) -> bool:
    return len({module.bits for module in switchable_modules(model)}) <= 1


def write_assignment(path: str | PathLike[str], assignment: Assignment) -> Path:
    """A JSON file {"assignment": {pattern: bits}} that `read_assignment` and `bits=@FILE` read."""
    target = Path(path)
    plain = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in assignment.items()}
    with atomic_write(target, "w") as f:
        f.write(json.dumps({"assignment": plain}, indent=1) + "\n")
    return target


def read_assignment(path: str | PathLike[str]) -> dict[str, Bits]:
    """The assignment a JSON file holds (`write_assignment`); BitWidthError naming the file if it holds none."""
    source = Path(path)
    try:
        data = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BitWidthError(f"{source}: not a readable assignment file ({type(exc).__name__}: {exc})") from None
    held = data.get("assignment") if isinstance(data, dict) else None
    if not isinstance(held, dict) or not held:
        raise BitWidthError(f"{source}: holds no assignment (expected {{\"assignment\": {{\"layer or pattern\": bits}}}})")
    return {str(k): (tuple(v) if isinstance(v, list) else v) for k, v in held.items()}


def _some(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")
