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


#: the variants of train_speed.json, as the docs name them
SPEED = {"fp_eager": "fp eager", "4bit_eager": "4-bit eager", "joint_eager": "joint [8,6,5,4] eager",
         "brevitas4_eager": "Brevitas 4-bit eager", "fp_compiled": "fp compiled", "4bit_compiled": "4-bit compiled",
         "joint_compiled": "joint [8,6,5,4] compiled", "brevitas4_compiled": "Brevitas 4-bit compiled"}
FIRST = "first_steps_s (compile + warm-up, excluded)"
GOAL = 1.15


def _speed(files: Sequence[dict[str, Any]]) -> str:
    """Median step, images/s and ratio to the eager float step per variant; a variant that failed, its error."""
    data = files[0]
    rows = []
    for key, label in SPEED.items():
        if key in data.get("errors", {}):
            rows.append([label, "does not compile", "", "", f"`{data['errors'][key]}`"])
            continue
        first = data[FIRST][key]
        rows.append([label, fmt(data["median_step_s"][key], 3, " s"), fmt(data["images_per_s"][key], 0),
                     fmt(data["ratios"][f"{key} / fp_eager"]), fmt(first, 1 if first < 10 else 0, " s")])
    return table(["variant (2 threads)", "median step", "images/s", "/ fp eager", "first 3 steps (cold compile)"], rows)


def _speed_goal(files: Sequence[dict[str, Any]]) -> str:
    """The joint step against four single-bit steps, and the goal of 4 x 1.15 full-precision steps."""
    ratios = files[0]["ratios"]

    def verdict(ratio: float) -> str:
        return "met" if ratio <= GOAL else f"missed by {fmt(ratio - GOAL, 3)}"

    fp_rows = [("fp, both eager", ratios["joint_eager / (4 x fp_eager)"]),
               ("fp, both compiled", ratios["joint_compiled / (4 x fp_compiled)"]),
               ("fp eager, joint compiled (`joint_compiled / fp_eager` / 4)", ratios["joint_compiled / fp_eager"] / 4)]
    rows = [[label, fmt(ratio, 3), verdict(ratio)] for label, ratio in fp_rows]
    rows += [["4-bit, both eager", fmt(ratios["joint_eager / (4 x 4bit_eager)"], 3), ""],
             ["4-bit, both compiled", fmt(ratios["joint_compiled / (4 x 4bit_compiled)"], 3), ""]]
    return table(["joint step / 4 steps of ...", "ratio", f"goal {GOAL}"], rows)


def _x(value: float | None) -> str:
    return fmt(value, 2, "x")


def _quantizers(files: Sequence[dict[str, Any]]) -> str:
    """Eager, compiled-quantizer and whole-model-compiled steps as ratios to the eager float32 step."""
    ratio = files[0]["ratio_to_fp32_eager"]
    rows = [["4 bits, fp32", _x(ratio["4bit_eager"]), _x(ratio["4bit_compiled_quantizers"]), _x(ratio.get("4bit_compiled"))],
            ["joint {8,6,5,4}, fp32", _x(ratio["joint8654_eager"]), _x(ratio["joint8654_compiled_quantizers"]),
             _x(ratio.get("joint8654_compiled"))],
            ["4 bits, bf16", _x(ratio["4bit_bf16_eager"]), _x(ratio["4bit_bf16_compiled_quantizers"]),
             _x(ratio.get("4bit_bf16_compiled"))]]
    return table(["step", "eager quantizers", "compiled quantizers", "whole model compiled"], rows)


#: the modes of stage2_modes.json, as the docs name them
MODES = {"fp32": "fp32, eager (default)", "bf16": "bf16", "compile_quantizers": "fp32, `compile_quantizers: true`"}


def _signed(value: float) -> str:
    """A gap with its sign, the minus as the docs write it (−)."""
    text = fmt(value)
    return text.replace("-", "−") if text.startswith("-") else f"+{text}"


def _stage2(files: Sequence[dict[str, Any]]) -> str:
    """Stage 2's wall time per mode (and its ratio to fp32 over both seeds) and top-1 against fp32."""
    data = files[0]
    runs = {(run["mode"], str(run["seed"])): run for run in data["runs"]}
    seeds = sorted({seed for _, seed in runs})
    bits = ("8", "6", "5", "4")
    base = sum(runs["fp32", seed]["seconds"] for seed in seeds)
    rows = []
    for mode, label in MODES.items():
        seconds = [runs[mode, seed]["seconds"] for seed in seeds]
        wall = " / ".join(fmt(s, 0, " s") for s in seconds)
        if mode == "fp32":
            top1 = "(" + "; ".join(" / ".join(fmt(runs[mode, seed]["top1"][b]) for b in bits) for seed in seeds) + ")"
        else:
            wall += f" ({fmt(sum(seconds) / base, 2, 'x')})"
            gaps = data["top1_gap_to_fp32"][mode]
            top1 = "; ".join(" / ".join(_signed(gaps[seed][b]) for b in bits) for seed in seeds)
        rows.append([label, wall, top1])
    return table(["mode", f"stage 2 wall time, seed {' / '.join(seeds)}",
                  f"top-1 − fp32 of the same seed at 8 / 6 / 5 / 4 bits, seed {'; seed '.join(seeds)}"], rows)


TABLES = {
    "quant_overhead_layouts": Table((R + "quant_overhead_nchw.json", R + "quant_overhead_channels_last_compiled.json"),
                                    _layouts),
    "model_step_time": Table((R + "model_step_time_mobilenet_v2_eager_and_compiled.json",
                              R + "model_step_time_resnet50_eager_and_compiled.json",
                              R + "model_step_time_mobilenet_v2_cold_compile.json",
                              R + "model_step_time_resnet50_cold_compile.json"), _model_steps),
    "train_speed": Table((R + "train_speed.json",), _speed),
    "train_speed_goal": Table((R + "train_speed.json",), _speed_goal),
    "quantizers_speed": Table((R + "quant_overhead_compiled_quantizers.json",), _quantizers),
    "stage2_modes": Table((R + "stage2_modes.json",), _stage2),
}
