"""Every committed result file records the machine it was measured on: the CPU model and the int8
instructions it has, as the `machine` block of `benchmarks.common.report` (from `describe()`) writes them.
Integer kernels run at very different speeds with and without VNNI or AMX, so a number without them
cannot be compared with another."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
FILES = sorted(path.relative_to(RESULTS).as_posix() for path in RESULTS.rglob("*.json"))

#: Result files measured before the machine block existed, kept although they lack it. Each has to be
#: rerun with its recorded command (its script is now `python -m benchmarks.<topic>.<name>`) or retired;
#: then its line goes (test_allowed_files_still_lack_the_record fails until it does). Path -> why it stays.
WITHOUT_MACHINE = {
    # 29 rows x 2 seeds of full training runs (stage 1 alone took 14 min a seed): hours of a 2-core CPU.
    # Its `environment` block names the CPU but not its int8 instructions.
    "accuracy/accuracy.json": "hours of training to rerun; records the CPU model without its int8 instructions",
    # measured at 1 thread while a training ran beside it: that condition is not in its command
    "training/train_speed_1thread_beside_training.json": "its condition (a training beside it) is not reproducible "
                                                          "from its command; machine unknown",
    # measured with the retired graph=mixed exporter's --bias modes on a stage 2 at lr 0.02 with the summed loss
    "deploy/onnx_agreement_main_job_lr0.02.json": "its --bias modes are retired (the script takes --graph); "
                                                  "machine unknown",
    # the ImageNet models' step: one table (benchmarks/README.md, model_step_time) reads all four, and the
    # compiled runs reuse the cold runs' inductor cache, so they are rerun together: 4 cold compiles of
    # 2-4 min each and 2 interleaved runs, about 25 min of a quiet 2-core CPU, not yet found
    "training/model_step_time_mobilenet_v2_cold_compile.json": "to rerun with its three siblings (about 25 min "
                                                               "of a quiet CPU); machine unknown",
    "training/model_step_time_resnet50_cold_compile.json": "rerun with its three siblings; machine unknown",
    "training/model_step_time_mobilenet_v2_eager_and_compiled.json": "rerun with its three siblings; machine unknown",
    "training/model_step_time_resnet50_eager_and_compiled.json": "rerun with its three siblings; machine unknown",
}


def machine_record(data: dict[str, Any]) -> tuple[Any, Any]:
    """The CPU model and int8 instructions of a result file's `machine` block (None where it has none)."""
    machine = data.get("machine")
    if not isinstance(machine, dict):
        return None, None
    return machine.get("cpu"), machine.get("int8_instructions")


def has_machine_record(data: dict[str, Any]) -> bool:
    cpu, int8 = machine_record(data)
    return (isinstance(cpu, str) and bool(cpu.strip()) and isinstance(int8, list)
            and all(isinstance(flag, str) for flag in int8))


@pytest.mark.parametrize("name", FILES)
def test_result_file_records_its_machine(name: str) -> None:
    if name in WITHOUT_MACHINE:
        pytest.skip(f"allowed without a machine record: {WITHOUT_MACHINE[name]}")
    data = json.loads((RESULTS / name).read_text())
    assert has_machine_record(data), (
        f"benchmarks/results/{name} has no machine record (a `machine` block with `cpu` and an "
        f"`int8_instructions` list, as benchmarks.common.report writes): {machine_record(data)}")


@pytest.mark.parametrize("name", sorted(WITHOUT_MACHINE))
def test_allowed_files_still_lack_the_record(name: str) -> None:
    """The allow-list names only files that exist and still lack the record: a rerun or retirement removes its line."""
    path = RESULTS / name
    assert path.is_file(), f"{name} is allowed without a machine record but no longer exists: remove its line"
    assert not has_machine_record(json.loads(path.read_text())), f"{name} records its machine now: remove its line"


def test_the_record_is_what_report_writes() -> None:
    """The shape checked here is the one benchmarks.common.report writes today."""
    from benchmarks.common import describe

    assert has_machine_record({"machine": {**describe(), "int8_instructions": []}})
    assert has_machine_record({"machine": describe()}) or describe()["int8_instructions"] is None
