"""The bit-width type and switching a whole model between bit-widths.

A bit-width is an int (weights and activations alike) or a pair (weight_bits, act_bits);
32 means full precision. Internally every bit-width is a normalised pair.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Union

from torch import nn

from ..errors import BitWidthError

Bits = Union[int, tuple[int, int]]
BitPair = tuple[int, int]
FULL_PRECISION = 32  # the one definition of "full precision" in the package
#: what an exported assignment's name may be: it names a `.pte` method and a file, and never reads as a bit-width
ASSIGNMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, eq=False)  # compared and hashed as itself: its layers are a dict
class NamedAssignment:
    """A per-layer assignment {layer or pattern: bits} under a name, as an export writes it beside the uniform
    bit-widths: the `.pte` method `forward_mixed_<name>`, the ONNX file `model_mixed_<name>.onnx`, the key
    `<name>` of `adabits.runtime`. `set_bits` takes it like the assignment itself."""

    name: str
    layers: Mapping[str, Bits]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not ASSIGNMENT_NAME.fullmatch(self.name):
            raise BitWidthError(f"an assignment's name is a letter, then up to 63 letters, digits or _; got {self.name!r}")
        if not isinstance(self.layers, Mapping):
            raise BitWidthError(f"assignment {self.name}: expected {{layer or pattern: bits}}, got {self.layers!r}")

    def __str__(self) -> str:
        return self.name


def _check_one(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BitWidthError(f"{what} must be an integer from 1 to {FULL_PRECISION}, got {value!r} ({type(value).__name__})")
    if not 1 <= value <= FULL_PRECISION:
        raise BitWidthError(f"{what} must be from 1 to {FULL_PRECISION} (32 = full precision), got {value}")
    return value


def parse_bits(bits: object) -> BitPair:
    """Validate a bit-width given as int or (weight, activation) pair and return the pair."""
    if isinstance(bits, (tuple, list)):
        if len(bits) != 2:
            raise BitWidthError(f"a bit-width pair must be (weight_bits, act_bits), got {bits!r}")
        return _check_one(bits[0], "weight bits"), _check_one(bits[1], "activation bits")
    value = _check_one(bits, "bit-width")
    return value, value


def format_bits(pair: BitPair) -> Bits:
    """The user-facing form: an int when weights and activations agree, else the pair."""
    return pair[0] if pair[0] == pair[1] else pair


#: how `bits_text` writes a bit-width: as in a config or command (`4`, `[4, 8]`, also whole lists), a table or
#: plot label (`4-bit`, `FP32`), a file-name tag (`4bit`), words (`4 bits`), a `.pte` method (`forward_4`);
#: a (weight, activation) pair that differs is `w4a8` in all but the config style
BitsStyle = Literal["config", "label", "tag", "words", "method"]


def bits_text(bits: object, style: BitsStyle = "label") -> str:
    """The one formatter of bit-widths for people and file names (see BitsStyle); a per-layer assignment is
    `mixed` (its mapping, in the config style)."""
    if isinstance(bits, NamedAssignment):
        return {"config": bits.name, "label": bits.name, "tag": f"mixed_{bits.name}",
                "words": f"assignment {bits.name}", "method": f"forward_mixed_{bits.name}"}[style]
    if isinstance(bits, Mapping) and style != "config":
        return "mixed"
    if style == "config":
        def plain(value: object) -> object:
            return [plain(x) for x in value] if isinstance(value, (list, tuple)) else value

        try:
            return json.dumps(plain(bits))
        except (TypeError, ValueError):
            return repr(bits)
    weight, act = parse_bits(bits)
    if weight != act:
        return f"forward_w{weight}a{act}" if style == "method" else f"w{weight}a{act}"
    if style == "label":
        return "FP32" if weight == FULL_PRECISION else f"{weight}-bit"
    return {"tag": f"{weight}bit", "words": f"{weight} bits", "method": f"forward_{weight}"}[style]


def bits_label(bits: object) -> str:
    """`bits_text(bits, "label")`: `8-bit`, `FP32`, `w4a8` (tables and plots)."""
    return bits_text(bits, "label")


def bits_tag(bits: object) -> str:
    """`bits_text(bits, "tag")`: `8bit`, `32bit`, `w4a8` (file names)."""
    return bits_text(bits, "tag")


def parse_bits_list(bits_list: Iterable[object]) -> tuple[BitPair, ...]:
    """Validate a bits_list: non-empty, no duplicates."""
    pairs = tuple(parse_bits(b) for b in bits_list)
    if not pairs:
        raise BitWidthError("bits_list must not be empty")
    if len(set(pairs)) != len(pairs):
        raise BitWidthError(f"bits_list has duplicates: {[format_bits(p) for p in pairs]}")
    return pairs


class BitSwitchable:
    """Mixin of every module whose computation depends on the current bit-width.

    Subclasses call `_init_bits` in their constructor and read `self.bits` (a pair) and
    `self.bits_index` (position in bits_list, which selects per-bit BN and alpha). Both are the
    module's own business: readers outside adabits.quant use the modules' methods instead.
    """

    bits_list: tuple[BitPair, ...]
    bits: BitPair
    bits_index: int

    def _init_bits(self, bits_list: Iterable[object]) -> None:
        self.bits_list = parse_bits_list(bits_list)
        self.bits = self.bits_list[0]
        self.bits_index = 0

    def switch_bits(self, bits: BitPair) -> None:
        self.bits_index = self.bits_list.index(bits)
        self.bits = bits

    def add_bits(self, bits: BitPair) -> None:
        """Make `bits` one more allowed bit-width, at the end of bits_list (subclasses add its per-bit state)."""
        self.bits_list = (*self.bits_list, bits)
        self.switch_bits(self.bits)  # refresh bits_index against the longer list


def nearest_bits(pairs: Sequence[BitPair], target: BitPair) -> int:
    """Index of the bit-width closest to `target` in activation bits (ties: the higher one)."""
    return min(range(len(pairs)), key=lambda i: (abs(pairs[i][1] - target[1]), -pairs[i][1]))


def switchable_modules(model: nn.Module) -> list[BitSwitchable]:
    return [m for m in model.modules() if isinstance(m, BitSwitchable)]


def _require_switchable(model: nn.Module) -> list[BitSwitchable]:
    modules = switchable_modules(model)
    if not modules:
        raise BitWidthError(
            f"{type(model).__name__} has no bit-switchable layers; build it with adabits.create_model "
            "or convert it with adabits.quantize_model"
        )
    return modules


def get_bits_list(model: nn.Module) -> list[Bits]:
    """The bit-widths the model was built (or calibrated) for, in order."""
    return [format_bits(p) for p in _require_switchable(model)[0].bits_list]


def set_bits(model: nn.Module, bits: Bits | Mapping[str, Bits] | NamedAssignment) -> None:
    """Switch every quantized layer and switchable BN of `model` to `bits`, or each layer to its bit-width in an
    assignment {layer name or fnmatch pattern: bits} (adabits/quant/assignment.py; also a NamedAssignment).

    Validates before touching anything, so a refused bit-width leaves the model as it was.
    """
    if isinstance(bits, NamedAssignment):
        bits = bits.layers
    if isinstance(bits, Mapping):
        from .assignment import module_bits, resolve  # (assignment reads the layers, which import this module)

        _require_switchable(model)
        for module, pair in module_bits(model, resolve(model, bits)):
            module.switch_bits(pair)
        return
    pair = parse_bits(bits)
    modules = _require_switchable(model)
    for module in modules:
        if pair not in module.bits_list:
            allowed = ", ".join(str(format_bits(p)) for p in module.bits_list)
            raise BitWidthError(
                f"bit-width {format_bits(pair)} is not one this model was trained or calibrated for; "
                f"allowed: {allowed}"
            )
    for module in modules:
        module.switch_bits(pair)


def get_bits(model: nn.Module) -> Bits | dict[str, Bits]:
    """The model's current bit-width (an int, or a pair when weights and activations differ); under a mixed
    assignment, every quantized layer's {name: bits} (which `set_bits` takes back)."""
    modules = _require_switchable(model)
    if len({module.bits for module in modules}) > 1:
        from .assignment import current

        return current(model)
    return format_bits(modules[0].bits)


@contextmanager
def use_bits(model: nn.Module, bits: Bits | Mapping[str, Bits] | NamedAssignment) -> Iterator[nn.Module]:
    """Run a block at `bits` (or an assignment); the previous bit-width(s) are restored on exit, also after an
    exception."""
    previous = get_bits(model)
    set_bits(model, bits)
    try:
        yield model
    finally:
        set_bits(model, previous)


def max_bits(bits_list: Iterable[object]) -> int:
    """Largest weight bit-width of a bits_list (used by first/last-layer policies)."""
    return max(p[0] for p in parse_bits_list(bits_list))
