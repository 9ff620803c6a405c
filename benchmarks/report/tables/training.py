"""Tables of the training benchmarks (benchmarks/training/)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..markdown import table
from ..table import Table, fmt

R = "benchmarks/results/training/"


def _layouts(files: Sequence[dict[str, Any]]) -> str:
    """ResNet-20 4-bit step against fp32, NCHW and channels-last (median_step_s, ratio_to_fp32_eager)."""
    rows = []
    for layout, data in zip(("NCHW", "channels-last"), files):
        step, ratio = data["median_step_s"], data["ratio_to_fp32_eager"]
        rows.append([layout, fmt(step["fp32_eager"], 3, " s"), fmt(step["4bit_eager"], 3, " s"),
                     fmt(step.get("4bit_compiled"), 3, " s"), fmt(ratio["4bit_eager"]), fmt(ratio.get("4bit_compiled"))])
    return table(["layout", "fp32 eager step", "4-bit eager step", "4-bit compiled step", "4-bit eager / fp32",
                  "4-bit compiled / fp32 eager"], rows)


TABLES = {
    "quant_overhead_layouts": Table((R + "quant_overhead_nchw.json", R + "quant_overhead_channels_last_compiled.json"),
                                    _layouts),
}
