"""Every value the schema accepts is one `adabits train` can run: the values that passed validation and failed
later (or trained nothing, or something else) are refused in one line with exit status 2, before any file is
written; YAML's readings of odd values (1e-3 as a string, yes/no as booleans) mean what they say."""
from __future__ import annotations

import pytest
import torch
from _engine_helpers import tiny_args
from test_data import fake_fashion_mnist

from adabits.cli import main
from adabits.engine import load_config

# key=value overrides (several joined by '; ') on the tiny synthetic config -> a fragment of the one-line message
REFUSED = [
    ("batch_size=true", "'batch_size' (from the command line): expected a number, got the boolean True"),
    ("num_epochs=yes", "'num_epochs' (from the command line): expected a number, got the boolean True"),
    ("lr=on", "'lr' (from the command line): expected a number, got the boolean True"),
    ("random_seed=no", "'random_seed' (from the command line): expected a number, got the boolean False"),
    ("max_iters_per_epoch=true", "'max_iters_per_epoch' (from the command line): expected a number"),
    ("topk=[1,true]", "'topk' (from the command line): expected a number, got the boolean"),
    ("lr=.inf", "'lr' (from the command line): Input should be a finite number"),
    ("weight_decay=.inf", "'weight_decay' (from the command line): Input should be a finite number"),
    ("multistep_lr_milestones=[.nan]", "'multistep_lr_milestones' (from the command line): Input should be a finite"),
    ("warmup_epochs=.inf", "'warmup_epochs' (from the command line): Input should be a finite number"),
    ("momentum=1", "'momentum' (from the command line): Input should be less than 1"),
    ("momentum=1.5", "'momentum' (from the command line): Input should be less than 1"),
    ("exp_decaying_lr_gamma=5", "'exp_decaying_lr_gamma' (from the command line): Input should be less than or equal to 1"),
    ("multistep_lr_gamma=2", "'multistep_lr_gamma' (from the command line): Input should be less than or equal to 1"),
    ("multistep_lr_milestones=[2,1]", "multistep_lr_milestones must be epochs from 0 up, in ascending order"),
    ("multistep_lr_milestones=[-1]", "multistep_lr_milestones must be epochs from 0 up, in ascending order"),
    ("run_name=../elsewhere", "run_name names a folder inside log_dir, got '../elsewhere'"),
    ("model=resnet20; depth=8", "depth is not an option of model resnet20, whose depth is fixed (remove depth, or use a model that takes one: resnet_cifar, vit_tiny)"),
    ("drop_last=true; batch_size=1000", "dataset synthetic has 96 training images, fewer than batch_size 1000 with "
                                       "drop_last: true"),
    ("model_options={width: 0}", "model_options width must be a positive finite number, got 0"),
    ("model_options={classifier_std: -1}", "model_options classifier_std must be a positive finite number, got -1"),
    ("model_options={classifier_std: .inf}", "model_options classifier_std must be a positive finite number, got inf"),
    ("model_options={width: yes}", "model_options width must be a positive finite number, got True"),
    ("num_threads=100000", "'num_threads' (from the command line): Input should be less than or equal to 1024"),
    # refused before this change too: kept so that they stay refused
    ("lr=0", "'lr' (from the command line): Input should be greater than 0"),
    ("lr=null", "'lr' (from the command line): Input should be a valid number, got None"),
    ("lr=[0.1]", "'lr' (from the command line): Input should be a valid number"),
    ("lr=.nan", "'lr' (from the command line): Input should be a finite number"),
    ("batch_size=64.5", "'batch_size' (from the command line): Input should be a valid integer, got a number with a "
                        "fractional part"),
    ("batch_size=[1,2]", "'batch_size' (from the command line): Input should be a valid integer"),
    ("batch_size=null", "'batch_size' (from the command line): Input should be a valid integer, got None"),
    ("depth=1e3", "'depth' (from the command line): Input should be a valid integer, unable to parse string"),
    ("depth=9", "CIFAR ResNet depth must be 6n+2"),
    ("eval_batch_size=0", "'eval_batch_size' (from the command line): Input should be greater than 0"),
    ("label_smoothing=1", "'label_smoothing' (from the command line): Input should be less than 1"),
    ("num_epochs=0", "'num_epochs' (from the command line): Input should be greater than or equal to 1"),
    ("warmup_epochs=5", "warmup_epochs (5.0) exceeds num_epochs (2)"),
    ("optimizer=adam", "unknown optimizer 'adam'; known: adamw, rmsprop, sgd"),
    ("num_classes=1", "'num_classes' (from the command line): Input should be greater than or equal to 2"),
    ("image_size=2", "'image_size' (from the command line): Input should be greater than or equal to 4"),
    ("topk=5", "'topk' (from the command line): Input should be a valid list"),
    ("topk=[0]", "topk must be positive integers"),
    ("bits_list=[]", "bits_list must not be empty"),
    ("bits_list=8", "bits_list must be a list of bit-widths"),
    ("bits_list=[true]", "bit-width must be an integer from 1 to 32, got True (bool)"),
    ("weight_decay=-1", "'weight_decay' (from the command line): Input should be greater than or equal to 0"),
    ("dataset_dir=2024", "'dataset_dir' (from the command line): Input should be a valid string, got 2024; quote it"),
    ("run_name=2024", "'run_name' (from the command line): Input should be a valid string, got 2024; quote it"),
    ("model=null", "'model' (from the command line): Input should be a valid string"),
    ("dataset=no", "'dataset' (from the command line): Input should be a valid string, got False (YAML reads "
                   "unquoted yes, no, on, off, true and false as booleans); quote it"),
    ("nesterov=maybe", "'nesterov' (from the command line): Input should be a valid boolean"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N"),
    ("dataset_dir=/nonexistent/folder", "dataset synthetic generates its images and reads no files"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[case for case, _ in REFUSED])
def test_refused_in_one_line_before_anything_is_written(tmp_path, capsys, overrides, message):
    code = main(["train", *tiny_args(tmp_path / "runs"), *overrides.split("; ")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


# values that YAML reads as something other than what they look like, and what they mean
ACCEPTED = [
    ("lr: 1e-3", "lr", 0.001),  # YAML 1.1 reads 1e-3 (no dot) as a string
    ("lr: '0.05'", "lr", 0.05),
    ("nesterov: yes", "nesterov", True),
    ("nesterov: off", "nesterov", False),
    ("batch_size: 64.0", "batch_size", 64),
    ("batch_size: '32'", "batch_size", 32),
    ("warmup_epochs: 1", "warmup_epochs", 1.0),
    ("topk: [1, 10]", "topk", [1, 10]),  # k at or above the class count is counted as a hit (error 0)
    ("dataset_dir: ''", "dataset_dir", None),
]


@pytest.mark.parametrize("line, key, value", ACCEPTED, ids=[line for line, _, _ in ACCEPTED])
def test_yaml_readings_mean_what_they_say(tmp_path, line, key, value):
    app = tmp_path / "x.yml"
    app.write_text(f"model: resnet_cifar\ndepth: 8\n{line}\n")
    assert getattr(load_config([f"app:{app}"]).config, key) == value


def test_odd_but_runnable_values_train(tmp_path):
    assert main(["train", *tiny_args(tmp_path, num_epochs=1, max_iters_per_epoch=1, batch_size=1000,
                                     eval_batch_size=1000, topk=[1, 10], lr="1e-3")]) == 0


def test_in_chans_that_does_not_fit_the_data_is_refused_in_prepare(tmp_path, capsys):
    fake_fashion_mnist(tmp_path / "fm")
    code = main(["train", *tiny_args(tmp_path / "runs", dataset="fashion_mnist", dataset_dir=str(tmp_path / "fm"),
                                     in_chans=3, image_size=28)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "fashion_mnist has 1-channel images, but the config sets in_chans 3" in err
    assert not (tmp_path / "runs").exists()


def test_a_cuda_device_this_machine_lacks_is_one_line(monkeypatch):
    from adabits.engine.build import resolve_device
    from adabits.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_mps_without_mps_is_one_line(monkeypatch):
    from adabits.engine.build import resolve_device
    from adabits.errors import ConfigError

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no MPS"):
        resolve_device("mps")
