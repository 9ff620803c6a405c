"""Tables of the accuracy benchmarks (benchmarks/accuracy/)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...accuracy import accuracy_tables as acc
from ...accuracy.pretrained_start_tables import model_section
from ..markdown import table
from ..table import Table, fmt

R = "benchmarks/results/accuracy/"


def _alpha_init(files: Sequence[dict[str, Any]]) -> str:
    """Top-1 per bit-width, fixed clipping levels against least-MSE ones."""
    data = files[0]
    rows = [[bits, fmt(data["fixed_alpha"][bits]), fmt(data["mse_alpha"][bits])] for bits in data["fixed_alpha"]]
    return table(["bits", "fixed alpha (8 / 10)", "alpha chosen by least MSE"], rows)


def _rows(build: Any) -> Any:
    """A table of benchmarks/accuracy/accuracy_tables.py (the one definition, which writes the .md beside
    the results too), applied to the `rows` of the file."""
    return lambda files: build(files[0]["rows"])


def _pretrained(name: str) -> Any:
    """One model of the pretrained-start benchmark: its heading (a level-4 heading in BENCHMARKS.md) and table."""
    def build(files: Sequence[dict[str, Any]]) -> str:
        data = files[0]
        return "\n".join(model_section(name, data["models"][name], data["settings"]["steps"], level=4))
    return build


ACCURACY = R + "accuracy.json"
JOINT_STEP = R + "accuracy_joint_step.json"

TABLES = {
    "alpha_init": Table((R + "alpha_init.json",), _alpha_init),
    "accuracy_main": Table((ACCURACY,), _rows(acc.main_table)),
    "accuracy_ablations": Table((ACCURACY,), _rows(acc.ablation_table)),
    "accuracy_joint_lr": Table((ACCURACY,), _rows(acc.joint_lr_table)),
    "accuracy_adaptation": Table((ACCURACY,), _rows(acc.adaptation_table)),
    "accuracy_calibration": Table((ACCURACY,), _rows(acc.calibration_table)),
    "accuracy_peers": Table((ACCURACY,), _rows(acc.peer_table)),
    "joint_step_432": Table((JOINT_STEP,), _rows(lambda rows: acc.distill_table(rows, "432", (4, 3, 2)))),
    **{f"pretrained_start_{name}": Table((R + "pretrained_start.json",), _pretrained(name))
       for name in ("cnn", "resnet20", "vit")},
    "joint_step_8654": Table((JOINT_STEP,), _rows(lambda rows: acc.distill_table(rows, "8654", (8, 6, 5, 4)))),
}
