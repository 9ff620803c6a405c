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


def _cold(runs: list[dict[str, Any]], variant: str) -> str:
    """The first (cold-compile) step of `variant` among the runs of a *_cold_compile.json file."""
    return fmt(next(run["first_step_s"][variant] for run in runs if variant in run["first_step_s"]), 0, " s")


def _model_steps(files: Sequence[dict[str, Any]]) -> str:
    """ImageNet models' training step, eager and compiled, fp32 and 4-bit, with cold compile times."""
    rows = []
    for label, data, cold in zip(("MobileNet V2", "ResNet-50"), files[:2], files[2:]):
        step, ratio = data["median_step_s"], data["ratios"]
        rows.append([label, *(fmt(step[v], 3, " s") for v in ("fp32_eager", "4bit_eager", "fp32_compiled", "4bit_compiled")),
                     fmt(ratio["4bit_eager / fp32_eager"]), fmt(ratio["4bit_compiled / fp32_compiled"]),
                     f"{_cold(cold['runs'], 'fp32_compiled')}, {_cold(cold['runs'], '4bit_compiled')}"])
    return table(["model", "fp32 eager", "4-bit eager", "fp32 compiled", "4-bit compiled", "4-bit / fp32, eager",
                  "4-bit / fp32, compiled", "cold compile (fp32, 4-bit)"], rows)


TABLES = {
    "quant_overhead_layouts": Table((R + "quant_overhead_nchw.json", R + "quant_overhead_channels_last_compiled.json"),
                                    _layouts),
    "model_step_time": Table((R + "model_step_time_mobilenet_v2_eager_and_compiled.json",
                              R + "model_step_time_resnet50_eager_and_compiled.json",
                              R + "model_step_time_mobilenet_v2_cold_compile.json",
                              R + "model_step_time_resnet50_cold_compile.json"), _model_steps),
}
