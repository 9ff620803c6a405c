"""The joint step's options (docs/training.md): the loss each computes against one written out by hand,
the sandwich rule's draws, resume with a float teacher, torchrun, and the config checks."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import FROZEN_BN_MODEL, run_processes
from _engine_helpers import TINY, tiny_config
from _preempt_helpers import StopAfter, assert_same_weights, no_plots, quiet, weights
from torch import Tensor, nn

import adabits
from adabits import cli
from adabits.engine import CheckpointError, ConfigError, Interrupted, Trainer, build_config
from adabits.engine.build import build_model
from adabits.engine.checkpoint import TEACHER_KEY
from adabits.joint import JointObjective, StepBits, distillation_loss, highest_first
from adabits.joint import step as joint_step_module


@pytest.fixture(autouse=True)
def _no_plots(monkeypatch) -> None:
    no_plots(monkeypatch)


# ---------------------------------------------------------------- the losses, by hand
def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_kl(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T^2 * mean over the batch of sum_c p_teacher * log(p_teacher / p_student), written out."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return t * t * total / len(student)


def _hand_ce(logits: list[list[float]], labels: list[int]) -> float:
    return sum(-math.log(_softmax(row, 1.0)[y]) for row, y in zip(logits, labels)) / len(labels)


STUDENT = [[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]]
TEACHER = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
LABELS = [0, 1]


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_distillation_loss_is_the_hand_computed_softened_kl(t):
    got = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert got.item() == pytest.approx(_hand_kl(STUDENT, TEACHER, t), rel=1e-5)


def test_a_taught_bit_width_mixes_label_and_distillation_loss_by_the_weight():
    objective = JointObjective(nn.CrossEntropyLoss(), "highest", weight=0.3, temperature=2.0)
    loss, label = objective.bit_loss(torch.tensor(STUDENT), torch.tensor(LABELS), torch.tensor(TEACHER))
    hand_ce = _hand_ce(STUDENT, LABELS)
    assert label.item() == pytest.approx(hand_ce, rel=1e-5)
    assert loss.item() == pytest.approx(0.7 * hand_ce + 0.3 * _hand_kl(STUDENT, TEACHER, 2.0), rel=1e-5)
    untaught, _ = objective.bit_loss(torch.tensor(STUDENT), torch.tensor(LABELS), None)
    assert untaught.item() == pytest.approx(hand_ce, rel=1e-5)


def test_no_gradient_reaches_the_teacher():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    distillation_loss(student, teacher, 1.0).backward()
    assert teacher.grad is None and student.grad is not None


def _step_gradients(trainer: Trainer, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The gradients of one train_step (the update itself skipped, so they stay readable)."""
    trainer.optimizer.step = lambda *a, **k: None  # type: ignore[method-assign]
    trainer.scheduler.step = lambda *a, **k: None  # type: ignore[method-assign]
    trainer.train_step(images, labels, step=0)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _hand_gradients(model: nn.Module, images: Tensor, labels: Tensor, order: list[Any],
                    teacher_of: dict[Any, Any], weight: float, t: float, divide: int,
                    float_logits: Tensor | None = None) -> dict[str, Tensor]:
    """The same step's gradients from the loss written out: sum over bit-widths of (label or mixed loss) / divide;
    a teacher named "float" is `float_logits`."""
    logits: dict[Any, Tensor] = {"float": float_logits} if float_logits is not None else {}
    total = torch.zeros(())
    for bits in order:
        adabits.set_bits(model, bits)
        logits[bits] = model(images)
        s = logits[bits]
        ce = -torch.log_softmax(s, 1).gather(1, labels[:, None]).mean()
        if teacher_of.get(bits) is None:
            total = total + ce
            continue
        p_t = torch.softmax(logits[teacher_of[bits]].detach() / t, 1)
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(s / t, 1))).sum(1).mean() * t * t
        total = total + (1 - weight) * ce + weight * kl
    model.zero_grad(set_to_none=True)
    (total / divide).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("distill", "joint_loss", "teachers"), [
    ("none", "sum", {}),
    ("none", "mean", {}),
    ("highest", "sum", {6: 8, 4: 8}),
    ("recursive", "mean", {6: 8, 4: 6}),
])
def test_the_joint_step_backpropagates_the_hand_computed_loss(tmp_path, distill, joint_loss, teachers):
    taught = {"distill_weight": 0.6, "distill_temperature": 2.0} if distill != "none" else {}
    cfg = tiny_config(tmp_path, bits_list=[6, 4, 8], distill=distill, joint_loss=joint_loss, **taught)
    trainer = Trainer(cfg, echo=quiet).prepare()
    images, labels = next(iter(trainer.loaders.train))
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    got = _step_gradients(trainer, images, labels)
    trainer.model.load_state_dict(start)  # the same BN running statistics and observer ranges
    order = [8, 6, 4] if teachers else [6, 4, 8]
    want = _hand_gradients(trainer.model, images, labels, order, teachers, 0.6, 2.0,
                           3 if joint_loss == "mean" else 1)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_float_teacher_teaches_every_bit_width_the_hand_computed_loss(tmp_path, float_start):
    cfg = tiny_config(tmp_path, bits_list=[8, 4], distill="float", fp_pretrained_file=str(float_start),
                      distill_weight=0.5, distill_temperature=3.0)
    trainer = Trainer(cfg, echo=quiet).prepare()
    images, labels = next(iter(trainer.loaders.train))
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    got = _step_gradients(trainer, images, labels)
    trainer.model.load_state_dict(start)
    assert trainer.teacher is not None
    with torch.no_grad():
        float_logits = trainer.teacher.model(images)
    want = _hand_gradients(trainer.model, images, labels, [8, 4], {8: "float", 4: "float"}, 0.5, 3.0, 1,
                           float_logits)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_mean_equals_sum_with_the_gradients_divided_by_the_bit_count(tmp_path):
    grads = {}
    for joint_loss in ("sum", "mean"):
        trainer = Trainer(tiny_config(tmp_path / joint_loss, joint_loss=joint_loss), echo=quiet).prepare()
        images, labels = next(iter(trainer.loaders.train))
        grads[joint_loss] = _step_gradients(trainer, images, labels)
    for name, value in grads["sum"].items():
        torch.testing.assert_close(grads["mean"][name] * 2, value, rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------- the sandwich rule
SEVEN = [8, 7, 6, 5, 4, 3, 2]


def test_a_sandwich_step_trains_the_highest_the_lowest_and_k_others():
    sampler = StepBits([4, 8, 2, 7, 6, 5, 3], middle=1, seed=3)
    draws = [sampler.at(step) for step in range(200)]
    assert sampler.per_step == 3
    for drawn in draws:
        assert len(drawn) == 3 and drawn[0] == 8 and drawn[-1] == 2 and drawn == highest_first(drawn)
    assert {d[1] for d in draws} == {7, 6, 5, 4, 3}  # every middle bit-width gets its turn
    assert len({tuple(d) for d in draws}) == 5


def test_sandwich_draws_depend_only_on_seed_and_step():
    a, b = StepBits(SEVEN, middle=2, seed=1995), StepBits(SEVEN, middle=2, seed=1995)
    assert [a.at(s) for s in (5, 0, 9)] == [b.at(s) for s in (5, 0, 9)]  # any order of asking
    assert [a.at(s) for s in range(20)] != [StepBits(SEVEN, middle=2, seed=1996).at(s) for s in range(20)]


def test_without_sampling_every_bit_width_trains_in_the_configs_order_unless_a_teacher_comes_first():
    assert StepBits([6, 8, 4]).at(0) == [6, 8, 4]
    assert StepBits([6, 8, 4], order_highest_first=True).at(0) == [8, 6, 4]
    assert StepBits([(4, 8), 8, 4], order_highest_first=True).at(0) == [8, (4, 8), 4]


def test_the_trainer_trains_only_the_sampled_bit_widths_but_evaluates_all(tmp_path, monkeypatch):
    trained: list[Any] = []
    original = joint_step_module.set_bits  # the trainer's steps go through adabits.joint_step
    monkeypatch.setattr(joint_step_module, "set_bits", lambda model, bits: (trained.append(bits), original(model, bits)))
    trainer = Trainer(tiny_config(tmp_path, bits_list=[8, 6, 5, 4], sandwich_middle=1), echo=quiet).prepare()
    summaries = [trainer.train_one_epoch(epoch) for epoch in (0, 1)]
    steps = trainer.iters_per_epoch
    draws = StepBits([8, 6, 5, 4], middle=1, seed=TINY["random_seed"])  # the run's steps counted over both epochs
    assert trained == [b for step in range(2 * steps) for b in draws.at(step)]
    for epoch, summary in enumerate(summaries):  # a bit-width no step of the epoch drew has no training row
        assert set(summary) == {b for step in range(epoch * steps, (epoch + 1) * steps) for b in draws.at(step)}
    assert set(trainer.evaluate()) == {8, 6, 5, 4}


# ---------------------------------------------------------------- config checks
@pytest.mark.parametrize(("changes", "message"), [
    ({"distill": "float"}, "distill: float distils from the float model in fp_pretrained_file"),
    ({"distill": "highest", "bits_list": [4]}, "trains only 1 bit-width"),
    ({"sandwich_middle": 2, "bits_list": [8, 6, 5, 4]}, "sandwich_middle 2 needs more than 4 bit-widths"),
    ({"distill": "teacher"}, "distill"),
    ({"joint_loss": "average"}, "joint_loss"),
    ({"distill_weight": 1.5}, "distill_weight"),
    ({"distill_weight": 0.5}, "apply to distill: highest, recursive or float"),
    ({"distill": "recursive", "bits_list": [8, 4], "adaptive_training": False}, "adaptive_training: false"),
    ({"sandwich_middle": 0, "bits_list": [8, 4]}, "trains only 2"),
    ({"distill": "highest", "bits_list": [[8, 4], [4, 8]]}, "no highest and lowest bit-width"),
    ({"sandwich_middle": 0, "bits_list": [8, [4, 8], 4]}, None),  # ordered: 8 >= w4a8 >= 4
])
def test_bad_joint_step_options_name_the_key(tmp_path, changes, message):
    if message is None:
        tiny_config(tmp_path, **changes)
        return
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, **changes)


def test_a_float_teacher_with_a_partial_load_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="partial_load"):
        tiny_config(tmp_path, distill="float", fp_pretrained_file="x.pt", partial_load=True)


def test_the_cli_refuses_a_float_teacher_without_its_file_in_one_line(tmp_path, capsys):
    code = cli.main(["train", *[f"{k}={v}" for k, v in {**TINY, "log_dir": str(tmp_path)}.items()
                                if k not in ("bits_list", "topk")], "distill=float"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fp_pretrained_file" in err[0]


# ---------------------------------------------------------------- the float teacher: checkpoint and resume
@pytest.fixture(scope="module")
def float_start(tmp_path_factory) -> Path:
    """A tiny float model (bits [32]) to start from and to learn from."""
    log_dir = tmp_path_factory.mktemp("float")
    with pytest.MonkeyPatch.context() as patch:
        no_plots(patch)
        Trainer(tiny_config(log_dir, bits_list=[32], num_epochs=1), echo=quiet).prepare().fit()
    return log_dir / "tiny" / "best_model.pt"


def _taught(log_dir: Path, float_start: Path, **changes: Any):
    return tiny_config(log_dir, distill="float", fp_pretrained_file=str(float_start), bits_list=[8, 6, 5, 4],
                       sandwich_middle=1, joint_loss="mean", checkpoint_every_steps=4, **changes)


def test_the_float_teacher_is_the_frozen_start_model(tmp_path, float_start):
    trainer = Trainer(_taught(tmp_path, float_start), echo=quiet).prepare()
    assert trainer.teacher is not None and not trainer.teacher.model.training
    assert not any(p.requires_grad for p in trainer.teacher.model.parameters())
    start = build_model(tiny_config(tmp_path, bits_list=[32]), 4, 1).eval()
    start.load_state_dict(torch.load(float_start, weights_only=True)["model"])
    images, _ = next(iter(trainer.loaders.val))
    with torch.no_grad():
        torch.testing.assert_close(trainer.teacher.model(images), start(images), rtol=0, atol=0)


def test_a_run_with_a_float_teacher_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path, float_start):
    straight = Trainer(_taught(tmp_path / "straight", float_start), echo=quiet).prepare()
    straight.fit()
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        StopAfter(patch, 9)
        Trainer(_taught(tmp_path / "stopped", float_start), echo=quiet).prepare().fit()
    ckpt = torch.load(tmp_path / "stopped" / "tiny" / "latest_checkpoint.pt", weights_only=True)
    assert isinstance(ckpt[TEACHER_KEY], str)
    resumed = Trainer(_taught(tmp_path / "stopped", float_start), echo=quiet).prepare()
    assert resumed.position is not None and (resumed.position.epoch, resumed.position.step) == (1, 2)
    resumed.fit()
    assert_same_weights(weights(resumed), weights(straight))


def test_a_changed_teacher_file_refuses_the_resume(tmp_path, float_start):
    teacher_file = tmp_path / "teacher.pt"
    teacher_file.write_bytes(float_start.read_bytes())
    cfg = _taught(tmp_path, teacher_file, num_epochs=1)
    Trainer(cfg, echo=quiet).prepare().fit()
    ckpt = torch.load(teacher_file, weights_only=True)
    ckpt["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    ckpt.pop("checksums", None)
    torch.save(ckpt, teacher_file)
    with pytest.raises(CheckpointError, match="no longer holds the float teacher"):
        Trainer(_taught(tmp_path, teacher_file, num_epochs=2), echo=quiet).prepare()


# ---------------------------------------------------------------- torchrun
def _one_epoch(_rank: int, raw: dict[str, Any]) -> dict[str, Any]:
    trainer = Trainer(build_config(raw), echo=quiet).prepare()
    trainer.train_one_epoch(0)
    return {"state": {k: v.clone() for k, v in trainer.model.state_dict().items()}}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with Gloo")
def test_two_processes_with_a_teacher_and_a_sandwich_end_as_one_process(tmp_path, float_start):
    """Every rank draws the same bit-widths and learns from the same teacher (frozen-BN model: per-process
    BN batch statistics would differ; see _dist_helpers.FrozenBNResNet)."""
    teacher_run = tmp_path / "teacher"
    base = {**{k: v for k, v in TINY.items() if k != "depth"}, "model": FROZEN_BN_MODEL, "synthetic_train_size": 64,
            "lr_scheduler": "constant", "num_epochs": 1, "normalize": True}
    with pytest.MonkeyPatch.context() as patch:
        no_plots(patch)
        # the frozen-BN model's layers, with BN that normalises in training (frozen BN at 32 bits diverges)
        Trainer(build_config({**base, "model": "resnet_cifar", "depth": 8, "model_options": {"width": 8},
                              "bits_list": [32], "log_dir": str(teacher_run), "run_name": "fp"}),
                echo=quiet).prepare().fit()
    raw = {**base, "bits_list": [8, 6, 5, 4], "sandwich_middle": 1, "distill": "float", "joint_loss": "mean",
           "use_diff_seed": True,  # the draw must not follow each process's own seed
           "fp_pretrained_file": str(teacher_run / "fp" / "best_model.pt"), "log_dir": str(tmp_path / "runs"),
           "run_name": "taught"}
    ranks = run_processes(_one_epoch, 2, tmp_path / "out", raw)
    single = _one_epoch(0, raw)
    for r in ranks:
        assert "error" not in r, r.get("traceback")
        for key, value in single["state"].items():
            torch.testing.assert_close(r["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
