"""Tables of the accuracy benchmarks (benchmarks/accuracy/)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..markdown import table
from ..table import Table, fmt

R = "benchmarks/results/accuracy/"


def _alpha_init(files: Sequence[dict[str, Any]]) -> str:
    """Top-1 per bit-width, fixed clipping levels against least-MSE ones."""
    data = files[0]
    rows = [[bits, fmt(data["fixed_alpha"][bits]), fmt(data["mse_alpha"][bits])] for bits in data["fixed_alpha"]]
    return table(["bits", "fixed alpha (8 / 10)", "alpha chosen by least MSE"], rows)


TABLES = {
    "alpha_init": Table((R + "alpha_init.json",), _alpha_init),
}
