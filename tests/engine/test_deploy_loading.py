"""Loading trained models without a Trainer, the one choice of weights, bit-width pairs end to end,
and one-line errors for every odd command argument."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from _engine_helpers import TINY, tiny_args

import adabits
from adabits.cli import main, parse_args
from adabits.data import DATASETS, DataShape, dataset_shape
from adabits.engine import TrainConfig, build_config, load_trained
from adabits.engine import trainer as trainer_module
from adabits.engine.loading import SHAPE_KEY, model_shape
from adabits.errors import CheckpointError, ConfigError, DistributedError, UserError
from adabits.export import load_packed

PAIRS = [[4, 8], [8, 8]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run at bits [8, 4] (`modified` weights) trained for one epoch."""
    log_dir = tmp_path_factory.mktemp("runs")
    assert main(["train", *tiny_args(log_dir, num_epochs=1, weight_quant_scheme="modified")]) == 0
    return log_dir


def args(log_dir, *extra: str, **changes) -> list[str]:
    return [*tiny_args(log_dir, weight_quant_scheme="modified", **changes), *extra]


@pytest.fixture
def no_data_no_trainer(monkeypatch):
    """Reading any dataset, or building a Trainer, fails the test."""
    def refuse(*_a, **_k):
        raise AssertionError("no dataset may be read and no Trainer built here")

    for name in list(DATASETS):
        monkeypatch.setitem(DATASETS, name, refuse)
    monkeypatch.setattr(trainer_module.Trainer, "__init__", refuse)


def test_export_and_profile_read_no_data_and_build_no_trainer(trained, no_data_no_trainer, capsys, tmp_path):
    # num_classes / in_chans / image_size unset: the shapes come from the checkpoint
    unset = ["num_classes=null", "in_chans=null", "image_size=null"]
    assert main(["export", "--format", "packed", *args(trained, *unset, f"out={tmp_path / 'm.safetensors'}")]) == 0
    assert adabits.get_bits_list(load_packed(tmp_path / "m.safetensors")) == [8, 4]
    pytest.importorskip("onnxscript")  # graph=qdq: the quantize/dequantize graph needs no calibration images
    assert main(["export", *args(trained, *unset, "bits=4", "graph=qdq", f"out={tmp_path / 'm.onnx'}"),
                 "--format", "onnx"]) == 0
    assert main(["profile", *args(trained, *unset)]) == 0
    assert "input 1x8x8" in capsys.readouterr().out


def test_training_checkpoints_store_the_data_shape(trained) -> None:
    ckpt = torch.load(trained / "tiny" / "best_model.pt", weights_only=True)
    assert ckpt[SHAPE_KEY] == {"num_classes": 4, "in_chans": 1, "image_size": 8}


def test_shapes_without_a_checkpoint_come_from_dataset_metadata_not_files(tmp_path, no_data_no_trainer) -> None:
    nowhere = str(tmp_path / "nothing")
    assert dataset_shape(TrainConfig(dataset="imagenet1k", dataset_dir=nowhere)) == DataShape(1000, 3, 224)
    assert dataset_shape(TrainConfig(dataset="fashion_mnist", dataset_dir=nowhere)) == DataShape(10, 1, 28)
    assert dataset_shape(TrainConfig(dataset="cifar100", image_size=32)) == DataShape(100, 3, 32)
    # an older checkpoint without the shape falls back to the metadata as well
    assert model_shape(TrainConfig(dataset="cifar10"), {"model": {}}) == DataShape(10, 3, 32)


def test_load_trained_gives_the_model_in_eval_mode_with_its_source(trained) -> None:
    cfg = build_config({**TINY, "log_dir": str(trained), "run_name": "tiny", "weight_quant_scheme": "modified"})
    loaded = load_trained(cfg)
    assert loaded.source.kind == "run" and loaded.source.path == trained / "tiny" / "best_model.pt"
    assert not loaded.model.training and loaded.bits_list == [8, 4] and loaded.shape == DataShape(4, 1, 8)


@pytest.fixture
def stage2(tmp_path):
    """A stage-2 config (fp_pretrained_file set) whose run has no trained checkpoint yet."""
    fp = adabits.create_model("resnet_cifar", depth=8, bits_list=[32], num_classes=4, in_chans=1)
    torch.save({"model": fp.state_dict()}, tmp_path / "fp.pt")
    return tmp_path / "runs", f"fp_pretrained_file={tmp_path / 'fp.pt'}"


@pytest.mark.parametrize("command", [
    ["export", "--format", "onnx", "bits=4"], ["export", "--format", "packed"], ["test"], ["calibrate", "bits=6",
                                                                                             "num_batches=1"],
])
def test_a_missing_trained_checkpoint_stops_unless_the_start_is_asked_for(stage2, tmp_path, capsys, command) -> None:
    log_dir, fp_arg = stage2
    name, *rest = command
    out = [f"out={tmp_path / 'x.out'}"] if name in ("export", "calibrate") else []
    assert main([name, *args(log_dir, fp_arg, *rest, *out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no trained checkpoint at {log_dir / 'tiny' / 'best_model.pt'}" in err
    assert "pretrained_file=PATH" in err and "from_start=true" in err
    if name == "export" and "onnx" in rest:
        pytest.importorskip("onnx")
    assert main([name, *args(log_dir, fp_arg, *rest, *out, "from_start=true")]) == 0
    assert capsys.readouterr().out.startswith("note: from_start=true: using the full-precision start")


def test_from_start_needs_a_start(trained, capsys) -> None:
    assert main(["test", *args(trained, "from_start=true")]) == 2
    assert "from_start=true loads fp_pretrained_file, which this config does not set" in capsys.readouterr().err


def test_profile_of_an_untrained_config_counts_without_weights(tmp_path, capsys) -> None:
    assert main(["profile", *args(tmp_path)]) == 0
    assert "no trained weights" in capsys.readouterr().out


def test_bit_width_pairs_train_evaluate_report_calibrate_resume_and_export(tmp_path, capsys) -> None:
    log_dir, run = tmp_path / "runs", tmp_path / "runs" / "tiny"
    assert main(["train", *args(log_dir, num_epochs=1, bits_list=PAIRS)]) == 0
    out = capsys.readouterr().out
    assert "w4a8" in out and "8-bit" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["bits"], r["bits_label"]) for r in rows] == [([4, 8], "w4a8"), (8, "8-bit")]
    assert "| w4a8 |" in (run / "results.md").read_text() and (run / "accuracy_vs_bits.png").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["bits_list"] == [[4, 8], 8]
    assert main(["test", *args(log_dir, bits_list=PAIRS)]) == 0
    assert "w4a8" in capsys.readouterr().out
    # resume with pairs: the stored bits_list equals the config's ([[4, 8], [8, 8]] is [(4, 8), 8])
    assert main(["train", *args(log_dir, num_epochs=2, bits_list=[[4, 8], 8])]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert main(["calibrate", *args(log_dir, "bits=[4,6]", "num_batches=2", bits_list=PAIRS)]) == 0
    calibrated = run / "best_model_calibrated_w4a6.pt"
    assert f"saved {calibrated}" in capsys.readouterr().out
    assert torch.load(calibrated, weights_only=True)["calibrated_bits"] == [(4, 6)]
    with_cal = args(log_dir, f"pretrained_file={calibrated}", bits_list=PAIRS)
    assert main(["export", "--format", "packed", *with_cal]) == 0
    assert adabits.get_bits_list(load_packed(run / "model_packed.safetensors")) == [(4, 8), 8, (4, 6)]
    assert main(["profile", *with_cal, "bits=[4,6]"]) == 0
    capsys.readouterr()
    pytest.importorskip("onnx")
    assert main(["export", "--format", "onnx", *with_cal, "bits=[4,8]"]) == 0
    assert "(w4a8): all-integer" in capsys.readouterr().out and (run / "model_w4a8.onnx").is_file()
    assert main(["export", "--format", "pte", *with_cal, "calibration_images=32"]) == 0
    assert "forward_w4a8" in capsys.readouterr().out and (run / "model.pte").is_file()


@pytest.mark.parametrize("command, arg, fragment", [
    ("export", "bits=abc", "bits=\"abc\": bit-width must be an integer"),
    ("export", "bits=[4]", "a bit-width pair must be (weight_bits, act_bits)"),
    ("export", "bits=[[4]]", "a bit-width pair must be (weight_bits, act_bits)"),
    ("export", "bits=0", "from 1 to 32"),
    ("export", "bits=33", "from 1 to 32"),
    ("export", "bits=true", "got True (bool)"),
    ("export", "bits=4.0", "got 4.0 (float)"),
    ("export", "bits=[4,6]", "bits=[4, 6] is not a bit-width of this model; allowed: [8, 4]"),
    ("profile", "bits=[4,[4,4]]", "activation bits must be an integer"),
    ("calibrate", "bits=[4,4]", "bits=4 is already a bit-width of this model"),
    ("train", "bits_list=[]", "bits_list must not be empty"),
    ("train", "bits_list=[4,[4,4]]", "bits_list has duplicates"),
    ("train", "bits_list=[[4]]", "a bit-width pair"),
    ("train", "bits_list=4", "bits_list must be a list of bit-widths"),
    ("calibrate", "num_batches=abc", "num_batches must be a whole number of at least 1, got 'abc'"),
    ("calibrate", "out=", "out= needs a file path"),
    ("calibrate", "out=.", "is a folder"),
    ("export", "bias=int16", "bias= was retired with graph=mixed"),
    ("export", "graph=mixed", "graph=mixed was retired: use graph=integer"),
    ("profile", "verbose=maybe", "verbose must be true or false"),
])
def test_odd_command_arguments_are_one_line_and_exit_2(trained, capsys, command, arg, fragment) -> None:
    fmt = ["--format", "onnx"] if command == "export" and arg.startswith(("bits", "bias")) else []
    extra = ["bits=6"] if command == "calibrate" and not arg.startswith("bits") else []
    assert main([command, *fmt, *args(trained, arg, *extra)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and fragment in captured.err
    assert "Traceback" not in captured.err


def test_an_unwritable_out_is_one_line(trained, capsys, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", "--format", "packed", *args(trained, f"out={blocker / 'sub' / 'm.safetensors'}")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["export", "--format", "onnx", "app:x.yml", "bits=8"],
    ["export", "app:x.yml", "--format", "onnx", "bits=8"],
    ["export", "app:x.yml", "bits=8", "--format", "onnx"],
    ["export", "app:x.yml", "--format=onnx", "bits=8"],
])
def test_options_may_stand_anywhere(argv) -> None:
    parsed = parse_args(argv)
    assert parsed.command == "export" and parsed.format == "onnx" and parsed.args == ["app:x.yml", "bits=8"]


@pytest.mark.parametrize("argv, fragment", [
    ([], "the following arguments are required"),
    (["nope"], "invalid choice: 'nope'"),
    (["export", "app:x.yml", "--format", "xml"], "invalid choice: 'xml'"),
])
def test_usage_errors_are_one_line(capsys, argv, fragment) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err


def test_a_type_error_of_a_model_constructor_is_not_a_config_error(monkeypatch, tmp_path) -> None:
    from adabits.engine.build import build_model

    cfg = build_config({**TINY, "log_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="has no option"):
        build_model(cfg.model_copy(update={"model_options": {"widht": 8}}), 4, 1)

    def broken(*_a, **_k):
        raise TypeError("a bug inside the constructor")

    monkeypatch.setattr(adabits, "create_model", broken)
    with pytest.raises(TypeError, match="a bug"):
        build_model(cfg, 4, 1)


def test_processes_that_disagree_on_gradients_raise_a_distributed_error() -> None:
    from adabits.joint.gradients import GradientAllReduce

    with pytest.raises(DistributedError, match="disagree"):
        GradientAllReduce._check(torch.tensor([1.0]), [True], 2)


def test_a_checkpoint_of_another_model_is_refused_by_load_trained(trained, tmp_path) -> None:
    cfg = build_config({**TINY, "log_dir": str(trained), "run_name": "tiny", "bits_list": [6, 4]})
    with pytest.raises(CheckpointError, match=r"bits_list \[8, 4\]"):
        load_trained(cfg)


def test_test_builds_no_trainer_and_agrees_with_the_trainers_evaluation(trained, monkeypatch, capsys) -> None:
    """`adabits test` gives what training measured for the same checkpoint, and builds no Trainer."""
    from adabits.engine.report import eval_table

    best = torch.load(trained / "tiny" / "best_model.pt", weights_only=True)["best"]["val"]

    def refuse(*_a, **_k):
        raise AssertionError("adabits test built a Trainer")

    monkeypatch.setattr(trainer_module.Trainer, "__init__", refuse)
    assert main(["test", *args(trained)]) == 0
    assert capsys.readouterr().out.endswith(eval_table(best) + "\n")


def test_a_trainer_refuses_test_only_and_test_makes_the_same_choice(stage2) -> None:
    """`adabits test` is one path on one process or many (engine.deploy.evaluate_trained); it asks
    weights_source; a Trainer trains and says so when given test_only."""
    from adabits.engine import Trainer
    from adabits.engine.deploy import evaluate_trained_metrics

    log_dir, fp_arg = stage2
    cfg = build_config({**TINY, "log_dir": str(log_dir), "run_name": "tiny", "test_only": True,
                        "fp_pretrained_file": fp_arg.partition("=")[2]})
    with pytest.raises(UserError, match="run `adabits test"):
        Trainer(cfg, echo=lambda _m: None).prepare()
    with pytest.raises(CheckpointError, match="from_start=true"):
        evaluate_trained_metrics(cfg)
    trained, val = evaluate_trained_metrics(cfg, from_start=True)
    assert trained.notes[0].startswith("from_start=true") and set(val) == {8, 4}
