"""Config loading: files, overrides, the original's YAML, and every kind of bad input."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import adabits
from adabits.engine import ConfigError, TrainConfig, load_config

DATA = Path(__file__).parents[1] / "fixtures"
APPS = Path(__file__).parents[2] / "apps"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_follow_the_spec_and_quant_config():
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.weight_decay) == ("sgd", 0.9, True, 4e-5)
    assert cfg.normalize is False and cfg.topk == [1, 5]
    for field in dataclasses.fields(adabits.QuantConfig):
        assert getattr(cfg, field.name) == field.default, field.name


def test_overrides_parse_as_yaml_and_the_original_bs_form(tmp_path):
    app = write(tmp_path / "x.yml", "lr: 0.1\nbits_list: [8, 4]\n")
    loaded = load_config([f"app:{app}", "bits_list=[4,3,2]", "lr=0.05", "bs:256", "nesterov=false"])
    cfg = loaded.config
    assert cfg.bits_list == [4, 3, 2] and cfg.lr == 0.05 and cfg.batch_size == 256 and cfg.nesterov is False
    assert cfg.run_name == "x"


def test_include_merges_a_base_file_under_the_including_file(tmp_path):
    write(tmp_path / "base.yml", "lr: 0.3\nbatch_size: 64\nnum_epochs: 7\n")
    app = write(tmp_path / "exp.yml", "base: !include base.yml\nlr: 0.01\n")
    cfg = load_config([f"app:{app}"]).config
    assert (cfg.lr, cfg.batch_size, cfg.num_epochs) == (0.01, 64, 7)


def test_a_config_of_the_original_loads_unchanged():
    loaded = load_config([f"app:{DATA / 'original_q_resnet_cifar.yml'}"])
    cfg = loaded.config
    assert cfg.model == "resnet_cifar" and cfg.depth == 20 and cfg.bits_list == [5, 4, 3]
    assert cfg.dataset == "CIFAR10" and cfg.resume is None and cfg.pretrained_file is None
    notes = "\n".join(loaded.notes)
    assert "num_gpus_per_job" in notes and "gpu_type" in notes


@pytest.mark.parametrize("name, expected", [("models.q_mobilenet_v1", "mobilenet_v1"),
                                            ("models.q_mobilenet_v2", "mobilenet_v2")])
def test_original_model_paths_map_to_registry_names(name, expected):
    assert TrainConfig(model=name).model == expected


def test_shipped_configs_are_valid():
    files = sorted(APPS.rglob("*.yml"))
    assert files
    for path in files:
        load_config([f"app:{path}"])


@pytest.mark.parametrize("override, fragments", [
    ("lrr=0.1", ["unknown key 'lrr'", "command line", "did you mean 'lr'"]),
    ("lr=fast", ["'lr'", "valid number", "'fast'"]),
    ("bits_list=[0]", ["'bits_list'", "from 1 to 32"]),
    ("lr_scheduler=nope", ["unknown lr_scheduler 'nope'", "cos_annealing_iter"]),
    ("optimizer=adam2", ["unknown optimizer", "adamw"]),
    ("model=resnet21", ["unknown model 'resnet21'", "resnet20"]),
    ("device=tpu", ["device must be"]),
    ("bits_list=[4,4]", ["duplicates"]),
])
def test_bad_overrides_name_the_key(tmp_path, override, fragments):
    app = write(tmp_path / "ok.yml", "lr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config([f"app:{app}", override])
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_key_in_a_file_names_the_file_and_closest_key(tmp_path):
    app = write(tmp_path / "typo.yml", "batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"unknown key 'batch_sise' in .*typo\.yml; did you mean 'batch_size'"):
        load_config([f"app:{app}"])


def test_unknown_key_in_an_included_file_names_that_file(tmp_path):
    write(tmp_path / "base.yml", "momentun: 0.9\n")
    app = write(tmp_path / "exp.yml", "base: !include base.yml\n")
    with pytest.raises(ConfigError, match=r"base\.yml; did you mean 'momentum'"):
        load_config([f"app:{app}"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([f"app:{tmp_path / 'nope.yml'}"])
    bad = write(tmp_path / "bad.yml", "lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([f"app:{bad}"])
    listy = write(tmp_path / "list.yml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config([f"app:{listy}"])
    with pytest.raises(ConfigError, match="no config given"):
        load_config([])
