"""What a registered table is: the result files it reads and the function that turns them into markdown."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

#: the JSON of each source file, in the order the table names them
Build = Callable[[Sequence[dict[str, Any]]], str]


@dataclass(frozen=True)
class Table:
    """A table defined once: `sources` (paths from the repository root) and `build`, which returns the
    markdown table from their JSON (numbers formatted as the docs show them)."""

    sources: tuple[str, ...]
    build: Build


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number rounded half up to `digits` as written in the file (4.85 -> 4.9, where binary floating
    point would give 4.8), trailing zeros kept; `n/a` where the file has none."""
    if value is None:
        return "n/a"
    exact = value if isinstance(value, Decimal) else Decimal(repr(value))
    return f"{exact.quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)}{suffix}"


def exact_mean(values: list[float]) -> Decimal:
    """The mean of numbers as written in the file, in decimal (85.38 and 85.31 give 85.345, not 85.34499...)."""
    return sum((Decimal(repr(v)) for v in values), Decimal(0)) / len(values)
