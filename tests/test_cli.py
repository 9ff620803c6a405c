"""The command line as a user meets it: exit status 2 and one message for bad input, nothing written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _engine_helpers import tiny_args

from adabits.cli import main

ROOT = Path(__file__).parent.parent


def run_train_py(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=None if env is None else {**os.environ, **env})


@pytest.mark.parametrize("args, fragment", [
    (["app:missing.yml"], "config file not found: missing.yml"),
    (["app:cfg.yml", "lr=fast"], "'lr'"),
    (["app:cfg.yml", "bits_list=[0]"], "'bits_list'"),
    (["app:cfg.yml", "lr_scheduler=nope"], "unknown lr_scheduler 'nope'"),
    (["app:typo.yml"], "unknown key 'lrr' in typo.yml; did you mean 'lr'?"),
    (["app:cfg.yml", "dataset=synthetic", "resume=nowhere.pt"], "checkpoint not found: nowhere.pt"),
])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yml").write_text("log_dir: out\nnum_epochs: 1\n")
    (tmp_path / "typo.yml").write_text("lrr: 0.1\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", *args]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.err.startswith("error: ") and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_py_reports_bad_input_without_traceback(tmp_path):
    (tmp_path / "cfg.yml").write_text("log_dir: out\n")
    proc = run_train_py("app:cfg.yml", "lr=fast", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'lr'" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yml"]


def test_compiling_without_a_cpp_compiler_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "cfg.yml").write_text("log_dir: out\ndataset: synthetic\ndevice: cpu\n")
    proc = run_train_py("app:cfg.yml", "compile_quantizers=true", cwd=tmp_path, env={"CXX": "nosuchcxx"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "compile_quantizers: true" in proc.stderr and "no C++ compiler" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yml"]


def test_missing_dataset_exits_2(tmp_path, monkeypatch, capsys):
    from adabits.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "absent")
    code = main(["train", f"log_dir={tmp_path / 'out'}", "dataset=fashion_mnist",
                 f"dataset_dir={tmp_path / 'nothing'}", "app:" + str(ROOT / "apps/fashion_mnist/q_resnet20_adabits.yml")])
    assert code == 2
    assert f"dataset_dir {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_original_config_notes_and_cifar_error(tmp_path):
    proc = run_train_py(f"app:{ROOT / 'tests/fixtures/original_q_resnet_cifar.yml'}", f"log_dir={tmp_path / 'out'}",
                        f"dataset_dir={tmp_path / 'nodata'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "note: ignoring num_gpus_per_job" in proc.stderr
    assert "CIFAR-10: dataset_dir" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_train_then_test_through_main(tmp_path, capsys):
    assert main(["train", *tiny_args(tmp_path, num_epochs=1)]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "val top1 err" in out
    assert (tmp_path / "tiny" / "best_model.pt").is_file()
    assert main(["test", *tiny_args(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "8-bit" in table and "4-bit" in table and "top1 acc" in table


def test_test_without_weights_exits_2(tmp_path, capsys):
    assert main(["test", *tiny_args(tmp_path)]) == 2
    assert "no trained checkpoint at" in capsys.readouterr().err


def test_help_and_keys(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    assert "key=value" in capsys.readouterr().out
    assert main(["train", "--keys"]) == 0
    assert "bits_list: [8, 6, 5, 4]" in capsys.readouterr().out


@pytest.mark.parametrize(("signame", "status"), [("SIGINT", 130), ("SIGTERM", 143), ("SIGUSR1", 138)])
def test_ctrl_c_or_sigterm_stops_cleanly_and_names_the_checkpoint(tmp_path, signame, status):
    """Ctrl-C stops at once, naming the last checkpoint; a scheduler's signal saves the step under way first."""
    import signal

    import torch
    from _engine_helpers import tiny_args

    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(tmp_path, num_epochs=500)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # wait for the first finished epoch
            if line.startswith("epoch 2/500"):
                break
        proc.send_signal(getattr(signal, signame))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status
    said = "Last checkpoint:" if signame == "SIGINT" else "saved and stopped:"
    assert said in err and "latest_checkpoint.pt" in err and "Traceback" not in err
    assert (f"stopped by {signame}" in err) == (signame != "SIGINT")
    assert torch.load(tmp_path / "tiny" / "latest_checkpoint.pt", weights_only=True)["epoch"] >= 2
