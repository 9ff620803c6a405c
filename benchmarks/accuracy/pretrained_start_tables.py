"""The pretrained-start benchmark's tables from its JSON: one definition, used by pretrained_start (the .md
beside the results) and by `python -m benchmarks.report` (the docs). Imports neither torch nor the library."""
from __future__ import annotations

from typing import Any

BITS = [8, 6, 5, 4]

ROW_TITLES = {
    "float": "float (plain PyTorch)",
    "converted": "adabits: converted, no calibration",
    "calibrated": "adabits: converted, calibrated",
    "joint_steps": "adabits: calibrated + {steps} joint steps",
    "ort_int8": "ONNX Runtime quantize_static int8",
    "executorch_int8": "ExecuTorch XNNPACK int8 (PT2E)",
    "torch_ao_int8": "torch.ao FX PTQ int8",
}


def row_title(key: str, steps: int) -> str:
    if key.startswith("brevitas_"):
        return f"Brevitas PTQ {key.removeprefix('brevitas_')}"
    return ROW_TITLES.get(key, key).format(steps=steps)


def _cell(row: dict[str, Any], bits: str) -> str:
    if bits not in row["top1"]:
        return ""
    gap = row["gap_to_float"][bits]
    return f"{row['top1'][bits]:.2f}" if bits == "float" else f"{row['top1'][bits]:.2f} ({gap:+.2f})"


def model_section(name: str, bench: dict[str, Any], steps: int, level: int = 3) -> list[str]:
    """One model's heading (at markdown `level`) and table: top-1 per bit-width (gap to float in points),
    the seconds of each row, errors."""
    columns = ["float", *map(str, BITS)]
    training = bench["float_training"]
    lines = [f"{'#' * level} {name} ({bench['recipe']['model']}, {bench['parameters']:,} parameters, float model "
             f"{bench['recipe']['epochs']} epochs in {training['seconds']} s)", "",
             "| row | " + " | ".join(c if c == "float" else f"{c} bits" for c in columns) + " | seconds |",
             "|---" * (len(columns) + 2) + "|"]
    for key, row in bench["rows"].items():
        cells = [_cell(row, c) for c in columns]
        if "error" in row:
            cells[0] = "failed: " + row["error"].splitlines()[0][:160].replace("|", "/")
        title = row_title(key, steps)
        if row.get("float_layers"):
            title += f" ({len(row['float_layers'])} layers left float)"
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {row.get('seconds', '')} |")
    return lines


def markdown(result: dict[str, Any]) -> str:
    """One section per model (the .md beside the results)."""
    lines: list[str] = []
    for name, bench in result["models"].items():
        lines += [*model_section(name, bench, result["settings"]["steps"]), ""]
    return "\n".join(lines)
