"""Tables of the data benchmarks (benchmarks/data/)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..markdown import table
from ..table import Table, fmt

R = "benchmarks/results/data/"


def _loading(files: Sequence[dict[str, Any]]) -> str:
    """Loader images/s against the MobileNet V2 training step it feeds, per JPEG size."""
    rows = []
    for size, data in zip(("224x224", "448x448"), files):
        rate = data["images_per_s_median"]
        rows.append([size, fmt(rate["loader"], 0), fmt(rate["fp32_fixed"], 1), fmt(rate["4bit_fixed"], 1),
                     fmt(data["loader_over_fp32_training"], 0, "x"), fmt(data["loader_over_4bit_training"], 0, "x"),
                     fmt(data["fed_over_fixed_fp32"])])
    return table(["JPEG size", "loader (2 workers)", "MobileNet V2 fp32 training", "4-bit training", "loader / fp32",
                  "loader / 4-bit", "fed / fixed (fp32)"], rows)


TABLES = {"data_loading": Table((R + "data_loading_224.json", R + "data_loading_448.json"), _loading)}
