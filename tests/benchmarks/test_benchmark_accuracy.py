"""benchmarks/accuracy/accuracy.py: its plan of jobs, its summary over seeds and the report built from it."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.accuracy import accuracy, accuracy_report


def test_plan_runs_every_row_per_seed_after_its_float_model(tmp_path: Path) -> None:
    jobs = accuracy.plan([1, 2], tmp_path, threads=1, quick=False, with_peers=True)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys))
    per_seed = [j for j in jobs if j.seed == 1]
    assert {j.id for j in per_seed} >= {"stage1", "fp", "individual_2", "adabits_8654", "adabits_432_no_switchbn",
                                        "direct_adaptation", "calibrated", "brevitas_w4a4", "torch_ao_qat8"}
    for job in jobs:
        assert all(any(o.id == dep and o.seed == job.seed for o in jobs) for dep in job.after)
        assert job.needs == [f"seed{job.seed}/{dep}" for dep in job.after]  # the keys the job runner waits for
        if job.kind in ("train", "peer"):
            assert f"fp_pretrained_file={tmp_path / f'seed{job.seed}' / 'stage1' / 'best_model.pt'}" in job.args
            assert f"random_seed={job.seed}" in job.args and job.args[0] == f"app:{accuracy.STAGE2}"
    ablation = next(j for j in per_seed if j.id == "adabits_432_one_alpha")
    assert "switch_alpha=false" in ablation.args and "bits_list=[4,3,2]" in ablation.args


def test_collect_gives_mean_and_half_range_over_seeds() -> None:
    jobs = [accuracy.Job("adabits_432", s, "train") for s in (1, 2)]
    done = {"seed1/adabits_432": {"top1": {"4": 90.0, "2": 80.0}}, "seed2/adabits_432": {"top1": {"4": 91.0, "2": 81.5}}}
    rows = accuracy.collect(jobs, done, [1, 2])
    assert rows["adabits_432"]["top1"]["4"] == {"mean": 90.5, "half_range": 0.5, "n": 2}
    assert rows["adabits_432"]["top1"]["2"]["mean"] == pytest.approx(80.75, abs=0.01)


def test_report_tables_and_plots_from_results(tmp_path: Path) -> None:
    def stats(v: float) -> dict:
        return {"mean": v, "half_range": 0.1, "n": 2}
    def row(values: dict[int, tuple[float, float]]) -> dict:  # bits -> the two seeds' top-1
        return {"top1": {str(b): stats(sum(v) / 2) for b, v in values.items()},
                "seeds": {s: {"top1": {str(b): v[i] for b, v in values.items()}} for i, s in enumerate("12")}}
    rows = {"fp": {"top1": {"32": stats(92.0)}},
            **{f"individual_{b}": row({b: (90.0 - (8 - b), 90.0 - (8 - b))}) for b in (8, 6, 5, 4, 3, 2)},
            "adabits_8654": row({b: (89.8 - (8 - b), 90.0 - (8 - b)) for b in (8, 6, 5, 4)}),
            "calibrated": {"top1": {"7": stats(88.0), "3": stats(20.0)}}}
    rows.update({r: row({b: (80.0, 80.0) for b in (4, 3, 2)}) for r in accuracy_report.ABLATIONS})
    results = {"recipe": {"seeds": [1, 2]}, "rows": rows}
    text = accuracy_report.markdown(results)
    assert "| 8 | 90.00 ± 0.10 | 89.90 ± 0.10 | -0.10 (-0.20, +0.00) |" in text
    assert "7 (calibrated)" in text and "Direct adaptation" not in text  # a section whose rows are absent is left out
    accuracy_report.write_report(results, tmp_path / "acc")
    assert (tmp_path / "acc.md").read_text() == text
    assert (tmp_path / "acc_bits.png").stat().st_size > 1000 and (tmp_path / "acc_ablations.png").stat().st_size > 1000


def test_peer_rows_stand_next_to_our_rows_at_their_bits() -> None:
    def stats(v: float) -> dict:
        return {"mean": v, "half_range": 0.0, "n": 1}
    rows = {"individual_4": {"top1": {"4": stats(90.1)}, "seeds": {"1": {"top1": {"4": 90.1}}}},
            "individual_8": {"top1": {"8": stats(91.0)}, "seeds": {"1": {"top1": {"8": 91.0}}}},
            "brevitas_w4a4": {"top1": stats(89.5), "seeds": {"1": {"top1": 89.5}}},
            "torch_ao_qat8": {"top1": stats(90.9), "top1_int8": stats(90.8), "seeds": {"1": {"top1": 90.9}}}}
    text = accuracy_report.peer_table(rows)
    assert "| 4 | 90.10 | 89.50 | n/a | +0.60 |" in text and "| 8 | 91.00 | 90.90 | 90.80 | +0.10 |" in text


def test_rows_select_their_dependencies(tmp_path: Path) -> None:
    jobs = accuracy.plan([1, 2], tmp_path, threads=1, quick=False, with_peers=False)
    chosen = accuracy.select(jobs, ["direct_adaptation"])
    assert sorted(j.key for j in chosen) == sorted(f"seed{s}/{r}" for s in (1, 2)
                                                   for r in ("stage1", "individual_8", "direct_adaptation"))
    with pytest.raises(ValueError, match="unknown rows.*allowed: stage1, adabits_8654"):
        accuracy.select(jobs, ["individual_7"])


def test_the_joint_step_tables_pair_each_variant_with_its_reference_per_seed() -> None:
    def row(values: dict[int, tuple[float, float]]) -> dict:  # bits -> the two seeds' top-1
        return {"top1": {str(b): {"mean": sum(v) / 2, "half_range": abs(v[0] - v[1]) / 2, "n": 2}
                         for b, v in values.items()},
                "seeds": {s: {"top1": {str(b): v[i] for b, v in values.items()}} for i, s in enumerate("12")}}
    rows = {"stage1": row({32: (92.0, 91.0)}),
            **{f"individual_{b}": row({b: (90.0, 89.0)}) for b in (4, 3, 2)},
            "adabits_432_mean": row({b: (90.5, 88.5) for b in (4, 3, 2)}),
            "adabits_432_mean_distill_float": row({b: (91.0, 89.5) for b in (4, 3, 2)}),
            "adabits_7bits_mean": row({b: (80.0, 81.0) for b in accuracy_report.SEVEN_BITS}),
            "adabits_7bits_mean_sandwich1": row({b: (80.5, 80.0) for b in accuracy_report.SEVEN_BITS})}
    text = accuracy_report.markdown({"recipe": {"seeds": [1, 2]}, "rows": rows})
    assert ("| 4 | 91.50 ± 0.50 | 89.50 ± 0.50 | 89.50 ± 1.00; +0.00 (+0.50, -0.50) | "
            "90.25 ± 0.75; +0.75 (+1.00, +0.50) |") in text
    assert "| 2 | 80.50 ± 0.50 | 80.25 ± 0.25 | -0.25 (+0.50, -1.00) |" in text
    assert "{8,6,5,4}" not in text and "`sum` at lr" not in text  # sections whose rows are absent are left out
