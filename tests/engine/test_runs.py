"""The run folder as a safe place: refused states, resume policy per key, the lock, exact records, one-line errors."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from _engine_helpers import tiny_args, tiny_config

from adabits.cli import main
from adabits.engine import CheckpointError, ConfigError, Trainer, load_trained
from adabits.engine import checkpoint as ckpt_mod
from adabits.engine.checkpoint import POSITION_KEY
from adabits.engine.config import TrainConfig
from adabits.engine.resume_policy import FIXED, MAY_CHANGE, RESUME_RULES
from adabits.engine.run_folder import RunLock, remove_stale_temps
from adabits.errors import RunFolderError
from adabits.integrity import CHECKSUM_KEY

REPO = Path(__file__).resolve().parents[2]


def quiet(_msg: str) -> None:
    pass


def _trained(tmp_path: Path, epochs: int = 1, **changes) -> Path:
    Trainer(tiny_config(tmp_path, num_epochs=epochs, **changes), echo=quiet).prepare().fit()
    return tmp_path / "tiny"


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in _rows(run)]


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------- a folder that is not a new run


def test_records_without_latest_checkpoint_are_refused_not_overwritten(tmp_path, capsys):
    run = _trained(tmp_path)
    (run / "latest_checkpoint.pt").unlink()
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match=r"holds best_model.pt, metrics.jsonl.*resume=.*best_model.pt"):
        Trainer(tiny_config(tmp_path), echo=quiet).prepare()
    assert main(["train", *tiny_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "another run_name" in err
    assert _snapshot(run) == before  # nothing replaced, nothing appended


def test_resume_from_best_model_continues_with_one_history(tmp_path):
    run = _trained(tmp_path)
    (run / "latest_checkpoint.pt").unlink()
    Trainer(tiny_config(tmp_path, resume=str(run / "best_model.pt")), echo=quiet).prepare().fit()
    assert _epochs(run) == [1, 1, 2, 2]
    notes: list[str] = []
    Trainer(tiny_config(tmp_path, resume=str(run / "best_model.pt")), echo=notes.append).prepare().close()
    assert any("latest_checkpoint.pt is replaced by this run's checkpoint" in n for n in notes), notes


def test_latest_checkpoint_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "tiny" / "latest_checkpoint.pt").mkdir(parents=True)
    with pytest.raises(RunFolderError, match="latest_checkpoint.pt is a folder, not a checkpoint"):
        Trainer(tiny_config(tmp_path), echo=quiet).prepare()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        Trainer(tiny_config(tmp_path, run_name="other", resume=str(tmp_path / "tiny")), echo=quiet).prepare()


def test_a_run_cut_off_in_its_first_epoch_starts_again(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.yaml").write_text("num_epochs: 9\n")  # fit writes it before epoch 1
    assert Trainer(tiny_config(tmp_path), echo=quiet).prepare().start_epoch == 0


# ---------------------------------------------------------------- what may change on resume


def test_every_config_key_has_a_resume_rule():
    assert set(RESUME_RULES) == set(TrainConfig.model_fields)
    assert {rule for rule, _ in RESUME_RULES.values()} == {FIXED, MAY_CHANGE}
    assert RESUME_RULES["num_epochs"][0] == MAY_CHANGE and RESUME_RULES["lr"][0] == FIXED


@pytest.mark.parametrize("key, value", [("lr", 0.2), ("weight_decay", 0.0), ("lr_scheduler", "constant"),
                                        ("batch_size", 8), ("bits_list", [8, 4, 2]), ("random_seed", 1)])
def test_changing_what_the_run_computes_is_refused_on_resume(tmp_path, key, value):
    run = _trained(tmp_path)
    before = _snapshot(run)
    with pytest.raises((ConfigError, CheckpointError), match=rf"\b{key}\b"):
        Trainer(tiny_config(tmp_path, **{key: value}), echo=quiet).prepare()
    assert _snapshot(run) == before


def test_allowed_changes_are_applied_noted_and_recorded_in_config_yaml(tmp_path):
    run = _trained(tmp_path)
    notes: list[str] = []
    trainer = Trainer(tiny_config(tmp_path, num_epochs=2, log_every=5), echo=notes.append).prepare()
    assert any("num_epochs 1 -> 2" in n and "applied" in n for n in notes), notes
    trainer.fit()
    text = (run / "config.yaml").read_text()
    assert text.startswith("# resumed from ") and "num_epochs 1 -> 2" in text and "log_every 20 -> 5" in text
    assert yaml.safe_load(text)["num_epochs"] == 2
    assert _epochs(run) == [1, 1, 2, 2]


def test_num_epochs_below_the_trained_epochs_is_refused(tmp_path):
    _trained(tmp_path, epochs=2)
    with pytest.raises(ConfigError, match="has trained 2 epochs; set num_epochs=2 or more"):
        Trainer(tiny_config(tmp_path, num_epochs=1), echo=quiet).prepare()


# ---------------------------------------------------------------- one run per folder


_HOLDER = ("import sys, time; from pathlib import Path; from adabits.engine.run_folder import RunLock; "
           "lock = RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(300)")


@pytest.mark.skipif(sys.platform == "win32", reason="kill -9")
def test_a_second_process_is_turned_away_and_a_killed_holder_leaves_no_stuck_lock(tmp_path, capsys):
    run = _trained(tmp_path)
    before = _snapshot(run)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"{run} is in use by another run \(PID {holder.pid} on "):
            Trainer(tiny_config(tmp_path, num_epochs=2), echo=quiet).prepare()
        assert main(["train", *tiny_args(tmp_path, num_epochs=2)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"PID {holder.pid}" in err
        assert _snapshot(run) == before
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    trainer = Trainer(tiny_config(tmp_path, num_epochs=2), echo=quiet).prepare()  # the OS released it
    trainer.fit()
    assert _epochs(run) == [1, 1, 2, 2]
    assert not (run / ".lock").exists()  # released at the end of fit


def test_the_lock_is_released_when_prepare_fails_and_by_close(tmp_path):
    run = _trained(tmp_path)
    with pytest.raises(ConfigError):
        Trainer(tiny_config(tmp_path, lr=0.3), echo=quiet).prepare()
    held = Trainer(tiny_config(tmp_path), echo=quiet).prepare()  # not stuck after the failure
    with pytest.raises(RunFolderError, match="in use by another run"):
        RunLock(run).acquire()
    held.close()
    RunLock(run).acquire().release()


def test_a_failed_start_leaves_no_run_folder(tmp_path):
    with pytest.raises(CheckpointError):
        Trainer(tiny_config(tmp_path / "new" / "runs", resume=str(tmp_path / "none.pt")), echo=quiet).prepare()
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- exact records and stale temp files


def test_lost_and_cut_off_metrics_rows_are_restored_from_the_checkpoint(tmp_path):
    """The process died after the rename of epoch 2's checkpoint, during the append of its rows."""
    run = _trained(tmp_path, epochs=2)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:17])
    notes: list[str] = []
    Trainer(tiny_config(tmp_path, num_epochs=3), echo=notes.append).prepare().fit()
    assert _epochs(run) == [1, 1, 2, 2, 3, 3]
    assert (run / "metrics.jsonl").read_text().splitlines(keepends=True)[:4] == lines
    assert any("restored the rows of epoch(s) 2" in n for n in notes), notes


def test_rows_after_the_checkpoint_are_removed_before_they_are_trained_again(tmp_path):
    run = _trained(tmp_path, epochs=2)
    state = torch.load(run / "latest_checkpoint.pt", weights_only=True)
    with (run / "metrics.jsonl").open("a") as f:  # as if epoch 3 was appended by a run whose checkpoint is lost
        f.writelines(line.replace('"epoch": 2', '"epoch": 3') for line in state[ckpt_mod.METRICS_KEY][2:])
    notes: list[str] = []
    Trainer(tiny_config(tmp_path, num_epochs=3), echo=notes.append).prepare().fit()
    assert _epochs(run) == [1, 1, 2, 2, 3, 3]
    assert any("removed the rows of epoch(s) 3" in n for n in notes), notes


def test_stale_temp_files_of_our_saves_are_removed_and_others_kept(tmp_path):
    run = _trained(tmp_path)
    ours = [".latest_checkpoint.pt.0123abcd.tmp", ".best_model.pt.deadbeef.tmp", ".metrics.jsonl.00000000.tmp"]
    others = [".model.onnx.0123abcd.tmp", ".latest_checkpoint.pt.tmp", "notes.txt"]
    for name in ours + others:
        (run / name).write_bytes(b"x")
    notes: list[str] = []
    Trainer(tiny_config(tmp_path), echo=notes.append).prepare().close()
    assert not any((run / name).exists() for name in ours)
    assert all((run / name).exists() for name in others)
    assert any("removed 3 temp file(s) of an interrupted save" in n for n in notes), notes
    assert remove_stale_temps(tmp_path / "absent") == []


# ---------------------------------------------------------------- one line where a traceback was


def test_log_dir_that_cannot_be_written_is_found_in_prepare(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunFolderError, match="cannot write the run folder"):
        Trainer(tiny_config(tmp_path / "a_file"), echo=quiet).prepare()
    if Path("/proc/self").is_dir():
        with pytest.raises(RunFolderError, match="cannot write the run folder /proc/"):
            Trainer(tiny_config(Path("/proc/adabits-test")), echo=quiet).prepare()
    assert main(["train", *tiny_args(tmp_path / "a_file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set log_dir to a folder you can write" in err


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_log_dir_without_write_permission_is_found_in_prepare(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    try:
        with pytest.raises(RunFolderError, match="cannot write the run folder"):
            Trainer(tiny_config(tmp_path / "ro"), echo=quiet).prepare()
    finally:
        (tmp_path / "ro").chmod(0o700)


@pytest.mark.parametrize("failure, cause", [
    (OSError(errno.ENOSPC, "No space left on device"), r"No space left on device \(ENOSPC\)"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), r"Disk quota exceeded \(EDQUOT\)"),
    (RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                  "data/3: file write failed"), "torch.save failed"),
    (RuntimeError("unexpected pos 1664 vs 1552"), r"torch.save failed \(unexpected pos.*MiB free"),
])
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure,
                                                                                   cause):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"half")
            raise failure
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RunFolderError, match=r"could not write .*(best_model|latest_checkpoint)\.pt: ") as err:
        _trained(tmp_path, epochs=2)
    assert len(str(err.value).splitlines()) == 1 and re.search(cause, str(err.value)), err.value
    run = tmp_path / "tiny"
    assert torch.load(run / "latest_checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_other_runtime_errors_while_saving_keep_their_traceback(tmp_path, monkeypatch):
    def save(obj, f, *args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(RuntimeError, match="a bug"):
        _trained(tmp_path)


def test_checkpoint_with_marker_but_missing_or_mistyped_fields_is_named(tmp_path):
    run = _trained(tmp_path)
    state = torch.load(run / "latest_checkpoint.pt", weights_only=True)
    cases = {"bits_list": None, "epoch": "1", "optimizer": [], "config": None, ckpt_mod.METRICS_KEY: [1, 2]}
    for field, value in cases.items():
        broken = dict(state)
        broken.pop(CHECKSUM_KEY)  # mistyped fields of a file without checksums (a changed sealed one is corrupt)
        if value is None:
            del broken[field]
        else:
            broken[field] = value
        torch.save(broken, run / "latest_checkpoint.pt")
        with pytest.raises(CheckpointError, match=rf"'{field}'"):
            Trainer(tiny_config(tmp_path, num_epochs=2), echo=quiet).prepare()
    torch.save({"format": ckpt_mod.FORMAT, "model_name": "resnet_cifar"}, run / "best_model.pt")
    with pytest.raises(CheckpointError, match="no 'bits_list' field"):
        load_trained(tiny_config(tmp_path))


# ---------------------------------------------------------------- under torchrun: rank 0 decides, every rank stops


def _refused_on_every_rank(rank: int, raws: list[dict]) -> list[str]:
    from adabits.engine import build_config

    errors = []
    for raw in raws:
        try:
            Trainer(build_config(raw), echo=quiet).prepare().close()
            errors.append("")
        except RunFolderError as exc:
            errors.append(str(exc))
    return errors


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with Gloo is not available")
def test_two_processes_get_the_same_error_for_a_locked_or_refused_folder(tmp_path):
    from _dist_helpers import run_processes
    from _engine_helpers import TINY

    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "best_model.pt").write_bytes(b"x")
    (tmp_path / "records" / "metrics.jsonl").write_text("")
    lock = RunLock(tmp_path / "locked").acquire()  # this process holds it; the workers' rank 0 is turned away
    try:
        raws = [{**TINY, "log_dir": str(tmp_path), "run_name": name} for name in ("records", "locked")]
        ranks = run_processes(_refused_on_every_rank, 2, tmp_path / "out", raws)
    finally:
        lock.release()
    for result in ranks:
        assert not isinstance(result, dict), result.get("traceback")
    assert ranks[0] == ranks[1]
    assert "holds best_model.pt, metrics.jsonl" in ranks[0][0]
    assert f"is in use by another run (PID {os.getpid()} on " in ranks[0][1]


def test_docs_list_every_key_that_may_change_on_resume():
    text = (REPO / "docs" / "runs.md").read_text()
    missing = [key for key, (rule, _) in RESUME_RULES.items() if rule == MAY_CHANGE and f"`{key}`" not in text]
    assert not missing


def test_an_older_checkpoint_without_rows_keeps_the_folders_rows_up_to_its_epoch(tmp_path):
    run = _trained(tmp_path, epochs=2)
    state = torch.load(run / "latest_checkpoint.pt", weights_only=True)
    state["epoch"] = 1  # as if epoch 2's rows were appended after this checkpoint
    del state[ckpt_mod.METRICS_KEY]
    del state[POSITION_KEY]  # older checkpoints held neither the rows nor a position
    torch.save(state, run / "latest_checkpoint.pt")
    Trainer(tiny_config(tmp_path, num_epochs=2), echo=quiet).prepare().fit()
    assert _epochs(run) == [1, 1, 2, 2]


def test_resume_from_another_run_does_not_replace_this_folders_run(tmp_path):
    other = _trained(tmp_path / "a")
    run = _trained(tmp_path / "b")
    before = _snapshot(run)
    with pytest.raises(RunFolderError, match=r"holds latest_checkpoint.pt, best_model.pt.*another run_name.*"
                                             r"run without resume="):
        Trainer(tiny_config(tmp_path / "b", resume=str(other), num_epochs=2), echo=quiet).prepare()
    assert _snapshot(run) == before
    fresh = Trainer(tiny_config(tmp_path / "c", resume=str(other), num_epochs=2), echo=quiet).prepare()
    fresh.fit()  # into a new folder: the whole record comes along
    assert _epochs(tmp_path / "c" / "tiny") == [1, 1, 2, 2]


def test_a_checkpoint_of_another_model_is_one_line(tmp_path, capsys):
    _trained(tmp_path)
    assert main(["train", *tiny_args(tmp_path, bits_list=[6, 4])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bits_list [6, 4]" in err and "another log_dir or run_name" in err


def test_tensorboard_hides_the_events_of_epochs_trained_again(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = _trained(tmp_path, tensorboard=True)
    after_one = (run / "latest_checkpoint.pt").read_bytes()
    Trainer(tiny_config(tmp_path, num_epochs=2, tensorboard=True), echo=quiet).prepare().fit()
    (run / "latest_checkpoint.pt").write_bytes(after_one)  # as if epoch 2's checkpoint never happened
    Trainer(tiny_config(tmp_path, num_epochs=2, tensorboard=True), echo=quiet).prepare().fit()
    events = accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("lr")] == [1, 2]
    assert _epochs(run) == [1, 1, 2, 2]


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunFolderError, match="does not support locks"):
        RunLock(tmp_path / "run").acquire()
