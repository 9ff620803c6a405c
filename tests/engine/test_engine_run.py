"""End-to-end runs of the trainer on a tiny synthetic problem: outputs, resume, checkpoints."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from _engine_helpers import tiny_config

import adabits
from adabits.engine import CheckpointError, Interrupted, Trainer
from adabits.engine import checkpoint as ckpt_mod
from adabits.engine.trainer import Trainer as TrainerClass


def quiet(_msg: str) -> None:
    pass


def test_two_epoch_joint_run_writes_every_output(tmp_path):
    cfg = tiny_config(tmp_path)
    trainer = Trainer(cfg, echo=quiet).prepare()
    best = trainer.fit()
    run = tmp_path / "tiny"
    for name in ("config.yaml", "metrics.jsonl", "results.md", "accuracy_vs_bits.png",
                 "latest_checkpoint.pt", "best_model.pt"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["bits"]) for r in rows] == [(1, 8), (1, 4), (2, 8), (2, 4)]
    for r in rows:
        assert 0.0 <= r["val_top1_error"] <= 1.0 and math.isfinite(r["val_loss"]) and math.isfinite(r["train_loss"])
    assert yaml.safe_load((run / "config.yaml").read_text())["bits_list"] == [8, 4]
    results = (run / "results.md").read_text()
    assert "| 8-bit |" in results and "| 4-bit |" in results
    # the best checkpoint is the epoch with the lowest mean top-1 error over bit-widths
    by_epoch = {e: sum(r["val_top1_error"] for r in rows if r["epoch"] == e) / 2 for e in (1, 2)}
    assert best["epoch"] + 1 == min(by_epoch, key=by_epoch.get)
    latest = torch.load(run / "latest_checkpoint.pt", weights_only=True)
    assert latest["epoch"] == 2 and latest["bits_list"] == [8, 4]
    # exactly num_epochs epochs of steps: 96 samples / 16 = 6 steps per epoch
    assert latest["scheduler"]["last_epoch"] == 12


def test_training_learns_the_synthetic_task(tmp_path):
    cfg = tiny_config(tmp_path, num_epochs=3, synthetic_train_size=192)
    best = Trainer(cfg, echo=quiet).prepare().fit()
    assert best["mean_top1_error"] < 0.5  # chance is 0.75 with 4 classes


def test_joint_step_sums_the_gradients_of_every_bit_width(tmp_path):
    """One joint step equals the sum of per-bit gradients (AdaBits), checked against a manual computation."""
    cfg = tiny_config(tmp_path, weight_decay=0.0, momentum=0.0, lr=1.0, lr_scheduler="constant")
    trainer = Trainer(cfg, echo=quiet).prepare()
    model = trainer.model
    images, labels = next(iter(trainer.loaders.train))
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for bits in (8, 4):
        model.zero_grad()
        adabits.set_bits(model, bits)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                expected[n] += p.grad
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    trainer.iters_per_epoch = 1
    trainer.train_one_epoch(0)
    name = "fc.weight" if "fc.weight" in before else next(iter(before))
    step = before[name] - dict(model.named_parameters())[name].detach()
    torch.testing.assert_close(step, expected[name], rtol=1e-4, atol=1e-6)


def _final_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-2:]


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    Trainer(tiny_config(straight, num_epochs=3), echo=quiet).prepare().fit()

    stopped = tmp_path / "stopped"
    original = TrainerClass.train_one_epoch

    def stop_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(TrainerClass, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(Interrupted, match="latest_checkpoint.pt"):
        Trainer(tiny_config(stopped, num_epochs=3), echo=quiet).prepare().fit()
    monkeypatch.setattr(TrainerClass, "train_one_epoch", original)
    assert torch.load(stopped / "tiny" / "latest_checkpoint.pt", weights_only=True)["epoch"] == 1

    resumed = Trainer(tiny_config(stopped, num_epochs=3), echo=quiet).prepare()
    assert resumed.start_epoch == 1
    resumed.fit()
    a, b = _final_metrics(straight / "tiny"), _final_metrics(stopped / "tiny")
    for ra, rb in zip(a, b):
        for key in ("val_loss", "val_top1_error", "train_loss", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "latest_checkpoint.pt"
    ckpt_mod.save_atomic({"epoch": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest_checkpoint.pt"]  # no temp file left


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path)
    run = tmp_path / "tiny"
    run.mkdir(parents=True)
    (run / "latest_checkpoint.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Trainer(cfg, echo=quiet).prepare()


def test_checkpoint_of_another_bits_list_is_refused(tmp_path):
    Trainer(tiny_config(tmp_path, num_epochs=1), echo=quiet).prepare().fit()
    with pytest.raises(CheckpointError, match=r"bits_list \[8, 4\].*bits_list \[6, 4\]"):
        Trainer(tiny_config(tmp_path, bits_list=[6, 4]), echo=quiet).prepare()


def test_single_bit_and_full_precision_runs(tmp_path):
    single = Trainer(tiny_config(tmp_path, run_name="single", adaptive_training=False, num_epochs=1), echo=quiet)
    single.prepare().fit()
    assert single.bits == [8] and adabits.get_bits_list(single.model) == [8]
    fp = Trainer(tiny_config(tmp_path, run_name="fp", bits_list=[32], num_epochs=1), echo=quiet)
    best = fp.prepare().fit()
    assert list(best["val"]) == [32]


def test_pretrained_fp_and_test_only(tmp_path):
    fp = Trainer(tiny_config(tmp_path, run_name="fp", bits_list=[32], num_epochs=1), echo=quiet)
    fp.prepare().fit()
    fp_file = tmp_path / "fp" / "best_model.pt"
    q = Trainer(tiny_config(tmp_path, run_name="q", fp_pretrained_file=str(fp_file), num_epochs=1), echo=quiet)
    q.prepare()
    torch.testing.assert_close(q.model.state_dict()["fc.weight"], fp.model.state_dict()["fc.weight"])
    q.fit()
    # the stage-2 config still names its float start: test_only must evaluate the trained run, not that
    from adabits.engine.deploy import evaluate_trained_metrics

    _, val = evaluate_trained_metrics(tiny_config(tmp_path, run_name="q", fp_pretrained_file=str(fp_file),
                                                  test_only=True))
    best = torch.load(tmp_path / "q" / "best_model.pt", weights_only=True)["best"]["val"]
    for bits in (8, 4):
        assert val[bits]["top1_error"] == pytest.approx(best[bits]["top1_error"])
    with pytest.raises(CheckpointError, match="does not fit"):
        Trainer(tiny_config(tmp_path, run_name="x", pretrained_file=str(fp_file)), echo=quiet).prepare()


def test_divergence_stops_with_a_clear_error(tmp_path):
    from adabits.engine import UserError
    from adabits.errors import TrainingDiverged

    cfg = tiny_config(tmp_path, lr=1e30, lr_scheduler="constant", num_epochs=1)
    with pytest.raises(TrainingDiverged, match="diverged") as raised:
        Trainer(cfg, echo=quiet).prepare().fit()
    assert isinstance(raised.value, UserError)  # the CLI still prints it alone and exits with status 2


def test_alpha_init_mse_chooses_levels_before_training_but_not_on_resume(tmp_path):
    notes: list[str] = []
    trainer = Trainer(tiny_config(tmp_path, alpha_init="mse", num_epochs=1), echo=notes.append).prepare()
    alpha = trainer.model.layers[0].conv1.alpha.detach().clone()
    assert not torch.equal(alpha, torch.full_like(alpha, 8.0)) and alpha[1] < alpha[0]
    assert any("clipping levels chosen" in note for note in notes)
    trainer.fit()
    resumed_notes: list[str] = []
    Trainer(tiny_config(tmp_path, alpha_init="mse", num_epochs=2), echo=resumed_notes.append).prepare()
    assert not any("clipping levels chosen" in note for note in resumed_notes)


def test_tensorboard_key_writes_events_only_when_asked(tmp_path):
    Trainer(tiny_config(tmp_path, num_epochs=1)).prepare().fit()
    assert not (tmp_path / "tiny" / "tensorboard").exists()
    Trainer(tiny_config(tmp_path, num_epochs=1, run_name="tb", tensorboard=True)).prepare().fit()
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_an_exploding_loss_that_stays_finite_is_divergence_too(tmp_path):
    """lr 1e6 on a float network: the mean loss is about a million, a number, and the run must still stop."""
    from adabits.errors import TrainingDiverged

    cfg = tiny_config(tmp_path, bits_list=[32], lr=1e6, num_epochs=2)
    with pytest.raises(TrainingDiverged, match=r"where guessing gives 1\.39"):
        Trainer(cfg, echo=quiet).prepare().fit()
