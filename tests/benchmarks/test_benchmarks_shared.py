"""What the benchmarks share: the machine description, the report, recorded commands, timing, the job runner."""
from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks import common

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8 amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8 amx_bf16
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm
CPU implementer\t: 0x41
"""


def test_cpuinfo_gives_the_model_and_the_int8_instructions():
    assert common.parse_cpuinfo(X86_CPUINFO) == (
        "Intel(R) Xeon(R) Platinum 8480+", ["avx2", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"])
    assert common.parse_cpuinfo(ARM_CPUINFO) == (None, ["asimddp", "i8mm"])
    assert common.parse_cpuinfo("flags : fpu sse2 avx2\n") == (None, ["avx2"])  # no VNNI: AVX2 alone


def test_every_report_records_the_machine(tmp_path: Path, capsys):
    out = tmp_path / "sub" / "result.json"
    written = common.report({"command": "python -m benchmarks.x", "value": 1}, out)
    on_disk = json.loads(out.read_text())
    assert on_disk == written and json.loads(capsys.readouterr().out) == on_disk
    machine = on_disk["machine"]
    assert {"cpu", "cores", "int8_instructions", "torch", "python"} <= set(machine)
    assert list(on_disk)[:2] == ["command", "value"]
    assert len(on_disk["date"]) == 10  # YYYY-MM-DD, what benchmarks.report names under a table of the file


def test_recorded_commands_rerun_the_module():
    assert common.command("training.peers", ["--kind", "brevitas_w4a4", "bits_list=[4]"]) == \
        "python -m benchmarks.training.peers --kind brevitas_w4a4 'bits_list=[4]'"
    args = argparse.Namespace(rounds=5, channels_last=True, compile=False, out=None, variants=["a", "b"], note="x y")
    assert common.full_command("training.quant_overhead", args, ["note"]) == \
        "python -m benchmarks.training.quant_overhead --rounds 5 --channels-last --variants a b"


def test_interleaved_timing_runs_round_by_round_and_appends():
    calls: list[str] = []
    times = {"a": [9.0]}
    common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2, times)
    assert calls == ["a", "b", "a", "b"]
    assert len(times["a"]) == 3 and times["a"][0] == 9.0 and len(times["b"]) == 2


def test_bad_input_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as stop, common.exit_on_bad_input("training.peers"):
        raise common.BadInput("unknown peer kind 'x'")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "benchmarks.training.peers: unknown peer kind 'x'\n"


@dataclass
class FakeJob:
    key: str
    needs: list[str] = field(default_factory=list)
    priority: tuple[int, ...] = (0,)


def test_jobs_run_after_what_they_need_and_resume(tmp_path: Path):
    order: list[str] = []

    def run(job: FakeJob) -> dict:
        order.append(job.key)
        return {"value": len(order)}

    jobs = [FakeJob("s/b", ["s/a"], (0,)), FakeJob("s/a", [], (1,)), FakeJob("s/c", ["s/b"], (0,))]
    done = common.run_jobs(jobs, run, tmp_path, workers=2, executor=ThreadPoolExecutor(2))
    assert order == ["s/a", "s/b", "s/c"]
    assert json.loads((tmp_path / "s" / "c.json").read_text()) == done["s/c"] == {"value": 3}
    (tmp_path / "s" / "c.json").unlink()
    again = common.run_jobs(jobs, run, tmp_path, workers=2, executor=ThreadPoolExecutor(2))
    assert order == ["s/a", "s/b", "s/c", "s/c"] and again["s/a"] == {"value": 1}  # only the missing one reran


def test_a_failed_job_skips_what_needs_it_and_the_rest_finishes(tmp_path: Path):
    def run(job: FakeJob) -> dict:
        if job.key == "bad":
            raise RuntimeError("boom")
        return {}

    jobs = [FakeJob("bad"), FakeJob("after_bad", ["bad"]), FakeJob("after_after", ["after_bad"]), FakeJob("fine")]
    with pytest.raises(common.JobsFailed) as failed:
        common.run_jobs(jobs, run, tmp_path, workers=1, executor=ThreadPoolExecutor(1))
    assert failed.value.failed == {"bad": "RuntimeError: boom", "after_bad": "needs bad", "after_after": "needs after_bad"}
    assert (tmp_path / "fine.json").is_file() and not (tmp_path / "bad.json").exists()
