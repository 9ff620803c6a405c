"""Mid-epoch checkpoints (`checkpoint_every_steps`): a run stopped at any step and resumed ends bitwise
identical to an uninterrupted one (weights torch.equal, metrics rows equal), in one process and on 2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import kill_second_worker_when, run_processes
from _engine_helpers import tiny_args
from _preempt_helpers import (
    PREEMPT,
    StopAfter,
    assert_same_weights,
    metrics_rows,
    no_plots,
    preempt_args,
    quiet,
    weights,
)

from adabits import cli
from adabits.data import TensorLoader, ToModelInput
from adabits.engine import CheckpointError, ConfigError, Interrupted, Trainer, build_config, checkpoint
from adabits.engine.session import StopRequest

REPO = Path(__file__).resolve().parents[2]


def _config(log_dir: Path, **changes: Any):
    return build_config({**PREEMPT, "log_dir": str(log_dir), "run_name": "tiny", **changes})


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch) -> None:
    no_plots(monkeypatch)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The uninterrupted run: its final weights and metrics rows."""
    log_dir = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as patch:
        no_plots(patch)
        trainer = Trainer(_config(log_dir), echo=quiet).prepare()
        trainer.fit()
    return weights(trainer), metrics_rows(log_dir / "tiny")


@pytest.mark.parametrize(("stop", "last_checkpoint"), [
    (3, "none yet"),                  # before the first step checkpoint: the rerun starts over
    (5, "at step 4 of epoch 1"),      # mid-epoch, in the first epoch
    (7, "after epoch 1"),             # the end-of-epoch checkpoint (step 6) is the last one
    (9, "at step 2 of epoch 2"),      # global step 8: mid-epoch, after an epoch's checkpoint
])
def test_a_run_stopped_at_any_step_resumes_bitwise_identical(tmp_path, straight, stop, last_checkpoint):
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted, match=f"Last checkpoint: .*{last_checkpoint}"):
        StopAfter(patch, stop)
        Trainer(_config(tmp_path), echo=quiet).prepare().fit()
    notes: list[str] = []
    resumed = Trainer(_config(tmp_path), echo=notes.append).prepare()
    if stop > 3:
        assert any(f"resuming from {tmp_path / 'tiny' / 'latest_checkpoint.pt'} {last_checkpoint}" in n for n in notes)
    resumed.fit()
    assert_same_weights(weights(resumed), straight[0])
    assert metrics_rows(tmp_path / "tiny") == straight[1]


@pytest.mark.parametrize(("signal_at", "saved_at"), [
    (2, "at step 2 of epoch 1"),  # mid-epoch, before any step checkpoint: the stop writes one at the step under way
    (6, "after epoch 1"),         # at an epoch's last step: that epoch's own checkpoint, then the stop
    (9, "at step 3 of epoch 2"),  # mid-epoch, between step checkpoints
])
def test_a_scheduler_signal_saves_the_step_under_way_and_resumes_bitwise(tmp_path, straight, signal_at, saved_at):
    """SIGTERM / SIGUSR1 (the CLI sets `StopRequest.signal`) write latest_checkpoint.pt at the current step."""
    import signal

    stop = StopRequest()
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted, match=f"saved and stopped: .*{saved_at}"):
        original, done = Trainer.train_step, [0]

        def train_step(trainer: Trainer, *args: Any, **kwargs: Any) -> None:
            original(trainer, *args, **kwargs)
            done[0] += 1
            if done[0] == signal_at:
                stop.signal = signal.SIGTERM

        patch.setattr(Trainer, "train_step", train_step)
        Trainer(_config(tmp_path), echo=quiet, stop=stop).prepare().fit()
    assert stop.polled
    resumed = Trainer(_config(tmp_path), echo=quiet).prepare()
    resumed.fit()
    assert_same_weights(weights(resumed), straight[0])
    assert metrics_rows(tmp_path / "tiny") == straight[1]


def test_step_checkpoints_do_not_change_the_run(tmp_path, straight):
    trainer = Trainer(_config(tmp_path, checkpoint_every_steps=None), echo=quiet).prepare()
    trainer.fit()
    assert_same_weights(weights(trainer), straight[0])
    assert metrics_rows(tmp_path / "tiny") == straight[1]


def test_the_step_checkpoint_holds_the_position_and_is_the_latest(tmp_path, monkeypatch):
    StopAfter(monkeypatch, 5)
    with pytest.raises(Interrupted):
        Trainer(_config(tmp_path), echo=quiet).prepare().fit()
    ckpt = torch.load(tmp_path / "tiny" / "latest_checkpoint.pt", weights_only=True)
    position = ckpt[checkpoint.POSITION_KEY]
    assert (ckpt["epoch"], position["epoch"], position["step"]) == (0, 0, 4)
    assert ckpt["scheduler"]["last_epoch"] == 4
    assert len(position["ranks"]) == 1 and position["ranks"][0]["meters"][:, 0].tolist() == [64.0, 64.0]
    assert not (tmp_path / "tiny" / "metrics.jsonl").exists()  # rows are written at the epoch's end only


def _step_checkpoint(tmp_path: Path) -> Path:
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        StopAfter(patch, 5)
        Trainer(_config(tmp_path), echo=quiet).prepare().fit()
    return tmp_path / "tiny" / "latest_checkpoint.pt"


def test_a_mid_epoch_checkpoint_of_another_world_size_is_refused_in_one_line(tmp_path, capsys):
    path = _step_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ranks = ckpt[checkpoint.POSITION_KEY]["ranks"]
    ckpt[checkpoint.POSITION_KEY]["ranks"] = ranks * 2  # as if 2 processes had written it
    torch.save(ckpt, path)
    assert cli.main(["train", *preempt_args(tmp_path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "at step 4 of epoch 1 by 2 process(es), but this run has 1" in err
    assert "torchrun --nproc_per_node=2" in err


def test_a_mid_epoch_checkpoint_beyond_the_epoch_of_this_config_is_refused(tmp_path):
    path = _step_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="max_iters_per_epoch None -> 3"):  # the resume rules refuse it first
        Trainer(_config(tmp_path, max_iters_per_epoch=3), echo=quiet).prepare()
    ckpt = torch.load(path, weights_only=True)  # and the position itself is checked against the epoch's length
    with pytest.raises(CheckpointError, match="at step 4 of epoch 1, but an epoch of this config has 3 steps"):
        checkpoint.read_position(ckpt, path, 1, 3)
    assert path.is_file()


def test_meters_of_another_topk_are_refused(tmp_path):
    _step_checkpoint(tmp_path)
    trainer = Trainer(_config(tmp_path, topk=[1, 2, 3]), echo=quiet).prepare()
    with pytest.raises(CheckpointError, match="training meters of the epoch under way do not fit"):
        trainer.fit()


def test_checkpoint_every_steps_must_be_positive(tmp_path):
    from adabits.engine import ConfigError

    with pytest.raises(ConfigError, match="checkpoint_every_steps"):
        _config(tmp_path, checkpoint_every_steps=0)


# ---------------------------------------------------------------- loaders start mid-epoch


def _loader(**kw: Any) -> TensorLoader:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=gen)
    return TensorLoader(images, torch.arange(50), 8, ToModelInput(False, (0.0,), (1.0,)), shuffle=True, seed=3,
                        crop_padding=1, random_flip=True, epoch=2, **kw)


@pytest.mark.parametrize("kw", [{}, {"rank": 1, "world_size": 2}, {"rank": 1, "world_size": 2, "aug_seed": 9}])
def test_tensor_loader_from_a_step_yields_the_rest_of_a_full_pass(kw):
    full = list(_loader(**kw))
    for start in (0, 1, 5, len(full)):
        rest = list(_loader(**kw).iter_from(start))
        assert len(rest) == len(full) - start
        for (x, y), (fx, fy) in zip(rest, full[start:]):
            assert torch.equal(x, fx) and torch.equal(y, fy)
    with pytest.raises(ValueError, match="start must be in"):
        next(_loader(**kw).iter_from(len(full) + 1))


def test_folder_loader_skips_batches_without_decoding_them(tmp_path, monkeypatch):
    from test_data_folders import fake_imagenet, inet

    from adabits.data import build_loaders, folder_loader

    loader = build_loaders(inet(fake_imagenet(tmp_path, n_train=8))).train
    loader.set_epoch(1)
    before = torch.get_rng_state()
    full = [(x.clone(), y.clone()) for x, y in loader]
    assert torch.equal(torch.get_rng_state(), before)  # iterating draws nothing from the global stream
    opened: list[Any] = []
    real_open = folder_loader.open_rgb
    monkeypatch.setattr(folder_loader, "open_rgb", lambda path: opened.append(path) or real_open(path))
    rest = list(loader.iter_from(2))
    assert len(opened) == sum(len(y) for _, y in full[2:])  # the first 2 batches were never read
    assert len(rest) == len(full) - 2
    for (x, y), (fx, fy) in zip(rest, full[2:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)
    again = list(loader)  # a full pass after it starts at batch 0 again
    assert len(again) == len(full) and torch.equal(again[0][1], full[0][1])


# ---------------------------------------------------------------- 2 processes (Gloo)


#: 48 samples / global batch 16 = 3 steps per epoch; checkpoints after global steps 2, 3 (epoch end), 4, 6
TWO_PROCESSES: dict[str, Any] = {"synthetic_train_size": 48, "checkpoint_every_steps": 2, "use_diff_seed": True}


def _stop_and_resume(rank: int, log_dir: str, stops: list[int]) -> dict[str, Any]:
    """In one 2-process group: the uninterrupted run, then the same run stopped after `stops[0]` steps,
    resumed and stopped again after `stops[1]` more, and so on, and at last resumed to its end."""
    raw = {**PREEMPT, **TWO_PROCESSES, "log_dir": log_dir}
    no_plots(pytest.MonkeyPatch())  # this process ends with the test
    straight = Trainer(build_config({**raw, "run_name": "straight"}), echo=quiet).prepare()
    straight.fit()
    cfg = build_config({**raw, "run_name": "stopped"})
    messages = []
    for stop in stops:
        with pytest.MonkeyPatch.context() as patch:
            StopAfter(patch, stop)
            try:
                Trainer(cfg, echo=quiet).prepare().fit()
                messages.append("not interrupted")
            except Interrupted as exc:
                messages.append(str(exc))
    resumed = Trainer(cfg, echo=quiet).prepare()
    resumed.fit()
    return {"straight": weights(straight), "resumed": weights(resumed), "messages": messages}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with Gloo")
def test_two_processes_stopped_at_a_step_resume_bitwise_identical(tmp_path):
    """Per-process BN statistics, meters and random streams (use_diff_seed, input dropout) all come back,
    from an epoch's end (stopped after 3 steps) and from mid-epoch (stopped again 1 step later)."""
    ranks = run_processes(_stop_and_resume, 2, tmp_path / "out", str(tmp_path), [3, 1])
    latest = tmp_path / "stopped" / "latest_checkpoint.pt"
    for r in ranks:
        assert "error" not in r, r.get("traceback")
        assert f"Last checkpoint: {latest} (after epoch 1)" in r["messages"][0]
        assert f"Last checkpoint: {latest} (at step 1 of epoch 2)" in r["messages"][1]
        assert_same_weights(r["resumed"], r["straight"])
    assert metrics_rows(tmp_path / "stopped") == metrics_rows(tmp_path / "straight")


# ---------------------------------------------------------------- a real kill -9


def _position(path: Path) -> tuple[int, int] | None:
    try:
        position = torch.load(path, weights_only=True).get(checkpoint.POSITION_KEY)
    except (OSError, RuntimeError, EOFError):
        return None
    return (position["epoch"], position["step"]) if position else None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_ends_as_an_uninterrupted_run(tmp_path):
    """`python train.py` SIGKILLed once a mid-epoch checkpoint exists; the same command finishes the run."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    args = preempt_args(tmp_path, checkpoint_every_steps=1, num_epochs=3, synthetic_train_size=384)
    # the dropout model is registered by the test helpers: start train.py through them
    code = ("import sys, _preempt_helpers; from adabits.cli import main; "
            "sys.exit(main(['train', *sys.argv[1:]]))")

    def command(run_name: str) -> list[str]:
        return [sys.executable, "-c", code, *args, f"run_name={run_name}"]

    subprocess.run(command("straight"), cwd=tmp_path, env=env, check=True, capture_output=True)
    latest = tmp_path / "stopped" / "latest_checkpoint.pt"
    proc = subprocess.Popen(command("stopped"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        position = _position(latest) if latest.is_file() else None
        if position is not None and position[0] == 1 and position[1] >= 3:  # inside the second epoch
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(command("stopped"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stdout + rerun.stderr
    a = torch.load(tmp_path / "straight" / "latest_checkpoint.pt", weights_only=True)
    b = torch.load(latest, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    assert metrics_rows(tmp_path / "stopped") == metrics_rows(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_torchrun_worker_killed_mid_epoch_is_restarted_and_ends_as_an_uninterrupted_run(tmp_path):
    """torchrun --max-restarts=1, 2 processes: SIGKILL rank 1 in the second epoch, between step checkpoints."""

    args = tiny_args(tmp_path, num_epochs=2, synthetic_train_size=384, bits_list=[8, 6, 4], checkpoint_every_steps=5)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def torchrun(run_name: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--max-restarts=1", "--monitor-interval=0.2", str(REPO / "train.py"), *args, f"run_name={run_name}"]
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    straight = torchrun("straight")
    out, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out
    latest = tmp_path / "stopped" / "latest_checkpoint.pt"
    proc = torchrun("stopped")
    def in_epoch_2() -> bool:  # a step checkpoint of epoch 2 is on disk
        position = _position(latest) if latest.is_file() else None
        return position is not None and position[0] == 1 and position[1] > 0

    killed = kill_second_worker_when(proc, in_epoch_2)
    out, _ = proc.communicate(timeout=300)
    assert killed is not None, out
    assert proc.returncode == 0, out
    assert "resuming from" in out and "of epoch 2" in out, out
    a = torch.load(tmp_path / "straight" / "latest_checkpoint.pt", weights_only=True)
    b = torch.load(latest, weights_only=True)
    assert b["scheduler"]["last_epoch"] == a["scheduler"]["last_epoch"] == 2 * 384 // 16
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    assert metrics_rows(tmp_path / "stopped") == metrics_rows(tmp_path / "straight")
