"""Per-layer bit-widths: `set_bits(model, {pattern: bits})`, what each module follows, validation, save / load."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import adabits
from adabits.errors import BitWidthError
from adabits.quant.assignment import quantized_layers, read_assignment, write_assignment
from adabits.quant.bitwidth import switchable_modules
from adabits.quant.norms import SwitchableNorm

BITS = [4, 3, 2]


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return adabits.create_model("resnet_cifar", depth=8, bits_list=BITS, num_classes=4, in_chans=1,
                                quantize_residual=True)


LAYERS = list(quantized_layers(tiny()))


@settings(max_examples=30, deadline=None)
@given(chosen=st.lists(st.sampled_from(BITS), min_size=len(LAYERS), max_size=len(LAYERS)))
def test_each_layer_runs_at_its_bits_and_each_norm_follows_its_conv(chosen):
    model = tiny()
    assignment = dict(zip(LAYERS, chosen))
    adabits.set_bits(model, assignment)
    modules = dict(model.named_modules())
    for name, bits in assignment.items():
        assert modules[name].bits == (bits, bits)
    last = None
    for name, module in model.named_modules():  # a norm or observer runs at the layer registered before it
        if name in assignment:
            last = assignment[name]
        elif module in switchable_modules(model) and last is not None:
            assert module.bits == (last, last), name
    expected = assignment if len(set(chosen)) > 1 else chosen[0]
    assert adabits.get_bits(model) == expected
    with adabits.use_bits(model, 4):
        assert adabits.get_bits(model) == 4
    assert adabits.get_bits(model) == expected  # restored


def test_later_patterns_win_and_every_layer_must_be_covered():
    model = tiny()
    adabits.set_bits(model, {"*": 2, "layers.0.*": 4, "fc": 3})
    bits = adabits.get_bits(model)
    assert bits["layers.0.conv1"] == 4 and bits["layers.1.conv2"] == 2 and bits["fc"] == 3


@pytest.mark.parametrize(("assignment", "message"), [
    ({"*": 2, "nope.*": 4}, r"^assignment: 'nope\.\*' matches no quantized layer of CifarResNet; its layers are conv1"),
    ({"layers.0.*": 4}, r"^assignment leaves \d+ quantized layer\(s\) without a bit-width \(conv1, .*add '\*': B"),
    ({"*": 8}, r"^assignment: conv1 was not trained or calibrated for bit-width 8; allowed: 4, 3, 2$"),
    ({"*": "four"}, r"bit-width must be an integer"),
    ({}, r"^an assignment maps layer names"),
])
def test_a_bad_assignment_is_one_line_and_switches_nothing(assignment, message):
    model = tiny()
    adabits.set_bits(model, 3)
    with pytest.raises(BitWidthError, match=message) as refused:
        adabits.set_bits(model, assignment)
    assert "\n" not in str(refused.value)
    assert adabits.get_bits(model) == 3


def test_a_mixed_step_trains_only_the_state_of_each_layers_own_bit_width():
    """Per-layer isolation: BN statistics and clipping levels of the bit-widths a layer is not at stay as they were."""
    model = tiny().train()
    adabits.set_bits(model, {"*": 2, "layers.0.*": 4})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(8, 1, 8, 8)).sum().backward()
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, SwitchableNorm) and not module.shared:
            own = 0 if module.bits == (4, 4) else 2  # BITS = [4, 3, 2]
            for index, copy in enumerate(module.copies):
                moved = not torch.equal(copy.running_var, before[f"{name}.{module.copies_name}.{index}.running_var"])
                assert moved == (index == own), (name, index)
    conv = modules["layers.0.conv1"]
    assert conv.alpha.grad[0] != 0 and torch.all(conv.alpha.grad[1:] == 0)


@settings(max_examples=20, deadline=None)
@given(assignment=st.dictionaries(st.sampled_from(["*", *LAYERS]), st.sampled_from([*BITS, (4, 2)]), min_size=1))
def test_an_assignment_file_reads_back_the_same(tmp_path_factory, assignment):
    path = write_assignment(tmp_path_factory.mktemp("a") / "a.json", assignment)
    assert read_assignment(path) == assignment


def test_an_unreadable_assignment_file_is_one_line(tmp_path):
    (tmp_path / "a.json").write_bytes(b"\xff\x00")
    with pytest.raises(BitWidthError, match=r"a\.json: not a readable assignment file"):
        read_assignment(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"other": 1}')
    with pytest.raises(BitWidthError, match=r"b\.json: holds no assignment"):
        read_assignment(tmp_path / "b.json")


def test_the_search_finds_a_front_between_the_uniform_points_and_writes_it(tmp_path, capsys):
    """`adabits search` on a tiny trained run: the uniform points, candidates within each budget, the files."""
    import json

    from _engine_helpers import tiny_args

    from adabits.cli import main

    args = tiny_args(tmp_path, bits_list=[4, 3, 2], num_epochs=1)
    assert main(["train", *args]) == 0
    capsys.readouterr()
    assert main(["search", *args, "budget=30000", "points=5"]) == 0
    out = capsys.readouterr().out
    front = json.loads((tmp_path / "tiny" / "search" / "front.json").read_text())
    uniform = {row["uniform"]: row["cost"] for row in front["uniform"]}
    assert sorted(uniform) == [2, 3, 4] and uniform[2] < uniform[3] < uniform[4]
    assert front["candidates"] and all(row["cost"] <= 30000 * 1.3 for row in front["candidates"])
    chosen = read_assignment(tmp_path / "tiny" / "search" / "assignment.json")
    model = tiny()
    adabits.set_bits(model, chosen)  # every layer covered, every bit-width trained
    assert "within 30,000:" in out and (tmp_path / "tiny" / "search" / "front.png").is_file()
    assert main(["search", *args, "cost=watts"]) == 2
    assert "cost must be one of weight_bytes, bitops, latency; got 'watts'" in capsys.readouterr().err


def test_the_search_takes_each_layers_latency_in_onnx_runtime_as_its_cost(tmp_path, capsys):
    """cost=latency: every quantized layer timed alone at each bit-width (microseconds), the front written."""
    import json

    pytest.importorskip("onnxscript")
    from _engine_helpers import tiny_args

    from adabits.cli import main

    args = tiny_args(tmp_path, bits_list=[8, 4], num_epochs=1)
    assert main(["train", *args]) == 0
    assert main(["search", *args, "cost=latency", "points=3", "accuracy_level=4"]) == 0
    front = json.loads((tmp_path / "tiny" / "search" / "front.json").read_text())
    assert front["cost"] == "latency" and {row["uniform"] for row in front["uniform"]} == {8, 4}
    assert all(row["cost"] > 0 for row in front["uniform"] + front["candidates"])
    capsys.readouterr()
    assert main(["search", *args, "cost=latency", "accuracy_level=1"]) == 2
    assert "accuracy_level must be one of 0, 4; got 1" in capsys.readouterr().err
    assert main(["search", *args, "cost=bitops", "accuracy_level=4"]) == 2  # a key that would be ignored
    assert "accuracy_level= applies to cost=latency" in capsys.readouterr().err


def test_mixed_assignments_train_after_the_uniform_bit_widths_and_are_drawn_from_seed_and_step():
    from adabits.joint.sampling import random_assignments

    model = tiny().train()
    drawn = random_assignments(model, 2, seed=7, step=3)
    assert drawn == random_assignments(model, 2, seed=7, step=3) != random_assignments(model, 2, seed=7, step=4)
    assert all(set(a) == set(LAYERS) and set(a.values()) <= set(BITS) for a in drawn)
    steps = adabits.joint_step(model, torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,)), assignments=drawn)
    assert list(steps) == [4, 3, 2, "mixed:0", "mixed:1"]
    assert adabits.get_bits(model) == drawn[1] or len(set(drawn[1].values())) == 1  # left at the last one


def test_a_run_with_mixed_assignments_trains(tmp_path):
    from _engine_helpers import tiny_config
    from _preempt_helpers import quiet

    from adabits.engine import Trainer

    trainer = Trainer(tiny_config(tmp_path, bits_list=BITS, mixed_assignments=2, num_epochs=1), echo=quiet).prepare()
    best = trainer.fit()
    assert set(best["val"]) == set(BITS)  # the uniform bit-widths are what a run reports


def test_the_report_and_the_profile_show_an_assignment(tmp_path, capsys):
    from _engine_helpers import tiny_args

    from adabits.cli import main

    model = tiny()
    adabits.set_bits(model, {"*": 2, "layers.0.*": 4})
    report = str(adabits.conversion_report(model))
    assert "bits now" in report.splitlines()[0]
    assert next(line for line in report.splitlines() if line.startswith("layers.0.conv1")).count("4-bit") == 1
    assert "bits now" not in str(adabits.conversion_report(tiny()))  # uniform: no column
    path = write_assignment(tmp_path / "a.json", {"*": 2, "layers.0.*": 4})
    args = tiny_args(tmp_path, bits_list=BITS)
    assert main(["profile", *args, f"bits=@{path}"]) == 0
    mixed = capsys.readouterr().out
    assert main(["profile", *args, "bits=2"]) == 0
    two = capsys.readouterr().out
    size = [float(line.split("|")[4].split()[0]) for line in (mixed.splitlines()[-1], two.splitlines()[-1])]
    assert mixed.splitlines()[-1].split("|")[0].strip() == "mixed" and size[0] > size[1]
    (tmp_path / "bad.json").write_text('{"assignment": {"nope": 4}}')
    assert main(["profile", *args, f"bits=@{tmp_path / 'bad.json'}"]) == 2
    assert "'nope' matches no quantized layer" in capsys.readouterr().err
