"""Joint AdaBits training (Jin, Yang, Liao, CVPR 2020): one optimizer step per batch on the per-bit losses
summed (the seed) or averaged, optionally distilled and over a sandwich sample of the bit-widths (docs/training.md).

`Trainer(cfg).prepare()` locks the run folder (engine/session.py), then builds and checks everything that
can fail on bad input (data, model, checkpoints, config changes on resume) before anything else is written;
`fit()` then trains exactly num_epochs epochs, evaluates every bit-width after each one and writes
checkpoints (engine/checkpoint.py) and the run's files (engine/run_records.py). The step is
`adabits.joint_step`; the trainer keeps the loop.

Under torchrun (or `distributed: true`) every process trains on its part of each global batch and the
gradients meet in one all-reduce per optimizer step; metrics are summed over processes, and rank 0 alone
writes and prints.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

import adabits

from ..analysis.evaluation import evaluate_meters
from ..analysis.metrics import MeterSet
from ..errors import UserError
from ..joint.gradients import GradientAllReduce
from ..joint.sampling import random_assignments
from ..quant.bitwidth import Bits, bits_text
from . import backends, checkpoint, distributed, divergence, precision, report, resume_policy
from .build import RunParts, build_parts, resolve_device, start_weights
from .checkpointing import RunCheckpoints
from .config import TrainConfig
from .loading import run_dir, shape_record
from .optim import build_optimizer, build_scheduler
from .run_records import RunRecords
from .session import Printer, RunSession, StopRequest


class Interrupted(UserError):
    """Ctrl-C, or a scheduler's signal, during training; the message says which checkpoint is the last valid one."""


class Trainer:
    def __init__(self, cfg: TrainConfig, echo: Printer = print, dist_env: distributed.DistEnv | None = None,
                 stop: StopRequest | None = None) -> None:
        """`dist_env` overrides what the torchrun environment says (e.g. DistEnv() for a single-process run);
        `stop` is set by a scheduler's signal: the run saves the step under way and stops. (Evaluating a trained
        model, `adabits test`, is `engine.deploy.evaluate_trained`, not a Trainer.)"""
        self.cfg = cfg
        self.run_dir = run_dir(cfg)
        self.session = RunSession(cfg, self.run_dir, echo, dist_env)
        self.dist, self.echo = self.session.dist, self.session.echo
        self.stop = stop
        self.bits = cfg.train_bits
        self.resumed: checkpoint.Resumed | None = None
        self.position: checkpoint.Position | None = None  # where a resumed checkpoint stands in its epoch, until used

    # ---------------------------------------------------------------- setup (the lock is its one write)
    def prepare(self) -> "Trainer":
        """Join the process group and lock the run folder, then build everything; a failure releases the lock."""
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = distributed.device_for(self.dist, resolve_device(cfg.device))
        backends.require_compiler(self.device, [key for key in ("compile", "compile_quantizers") if getattr(cfg, key)])
        backends.configure(self.device, cfg.cudnn_benchmark)
        self.session.join(self.device)
        try:
            self._build()
        except BaseException:
            self.session.release()
            raise
        return self

    def _build(self) -> None:
        """Data, model, optimizer and the state to start from (a checkpoint or the pretrained weights)."""
        cfg = self.cfg
        if cfg.test_only:
            raise UserError("test_only: true evaluates a trained model: run `adabits test app:...` (a Trainer trains)")
        parts: RunParts = build_parts(cfg, self.device, self.dist)
        self.loaders, self.shape, self.model, self.teacher = parts.loaders, parts.shape, parts.model, parts.teacher
        self.criterion, self.step_bits, self.grad_scaler = parts.criterion, parts.step_bits, parts.grad_scaler
        self.iters_per_epoch = parts.iters_per_epoch
        self.state = checkpoint.TrainingState(
            self.model, build_optimizer(self.model, cfg), None, self.grad_scaler,
            {"mean_top1_error": math.inf, "epoch": -1, "val": {}}, [],
            self.teacher.digest if self.teacher is not None else None)
        self.state.scheduler = build_scheduler(self.state.optimizer, cfg, self.iters_per_epoch)
        self.optimizer, self.scheduler = self.state.optimizer, self.state.scheduler
        resume = self.session.resume_path()
        if resume is not None:
            self._restore(resume)
        else:
            start_weights(self.model, cfg, self.loaders.train, self.echo)
        self.guard = divergence.NonFiniteGuard(self.bits, self.device, check_gradients=self.grad_scaler is None)
        self.checkpoints = RunCheckpoints(
            self.run_dir, self.dist.is_main, self.dist.enabled, self.model,
            lambda epochs: self.state.record(cfg, self.bits, epochs, shape_record(self.shape)),
            lambda last: self.guard.check(self.iters_per_epoch, last))
        if self.resumed is not None:
            self.checkpoints.last = (self.resumed.path, self.resumed.describe())
        self._wrap_model()

    def _restore(self, path: Path) -> None:
        ckpt = checkpoint.read_training_checkpoint(path, self.cfg.model, self.bits)
        self.resumed = checkpoint.restore(self.state, ckpt, path, self.cfg, world_size=self.dist.world_size,
                                          iters_per_epoch=self.iters_per_epoch)
        self.position = self.resumed.position
        self.echo(f"resuming from {path} {self.resumed.describe()}")
        for change in self.resumed.changes:
            self.echo(f"note: resume: {change} ({resume_policy.RESUME_RULES[change.key][1]}; applied)")

    def _wrap_model(self) -> None:
        """The module the steps call: DDP around the model when distributed, compiled when asked."""
        wrapped: nn.Module = self.model
        self.grad_sync: GradientAllReduce | None = None
        if self.dist.enabled:
            wrapped = distributed.wrap(self.model, self.device)
            self.grad_sync = GradientAllReduce(self.model.parameters())
        self.forward: nn.Module = cast(nn.Module, torch.compile(wrapped)) if self.cfg.compile else wrapped

    def close(self) -> None:
        """Release the run folder and leave the process group (when one was joined); safe to call twice."""
        self.session.close()

    @property
    def start_epoch(self) -> int:
        return self.resumed.epochs_done if self.resumed else 0

    # ---------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> dict[Bits, dict[str, float]]:
        """One pass over the training set; a run resumed mid-epoch starts at its checkpoint's step, with that
        step's meters, BN statistics and random states, and skips the batches before it (`iter_from`)."""
        cfg = self.cfg
        self.model.train()
        loader = self.loaders.train
        loader.set_epoch(epoch)
        meters = MeterSet(self.bits, cfg.topk, self.device)
        lr = self.start_lr(epoch)
        start = self._resume_epoch(epoch, meters)
        bar = tqdm(total=self.iters_per_epoch, initial=start, desc=f"epoch {epoch + 1}/{cfg.num_epochs}",
                   leave=False, disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True, file=sys.stderr)
        done = start
        for step, (images, labels) in enumerate(loader.iter_from(start), start=start):
            if step >= self.iters_per_epoch:
                break
            self.train_step(images, labels, loader.share(step), meters, step=epoch * self.iters_per_epoch + step)
            if step + 1 < self.iters_per_epoch and (self._stop_requested() or self._step_checkpoint_due(epoch, step + 1)):
                self.checkpoints.latest(epoch, step + 1, lr, meters)
                self._stop_if_requested()
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.iters_per_epoch:
                self.guard.check(self.iters_per_epoch, self.checkpoints.describe_last("none (no checkpoint was written yet)"))
                bar.update(step + 1 - done)
                done = step + 1
                bar.set_postfix_str(_postfix(meters.summary()), refresh=False)
        bar.close()
        return self._reduced(meters).summary()

    def start_lr(self, epoch: int) -> float:
        """The lr epoch `epoch` started with (before a mid-epoch resume, the one its checkpoint recorded)."""
        if self.position is not None and self.position.epoch == epoch:
            return self.position.lr
        return float(self.optimizer.param_groups[0]["lr"])

    def _resume_epoch(self, epoch: int, meters: MeterSet) -> int:
        """The first step of this epoch: the resumed position's (its per-process state put back), else 0."""
        position, self.position = self.position, None
        if position is None or position.epoch != epoch:
            return 0
        checkpoint.restore_position(position, self.dist.rank, self.dist.world_size, self.model, meters)
        return position.step

    def _step_checkpoint_due(self, epoch: int, steps_done: int) -> bool:
        """Every `checkpoint_every_steps` optimizer steps of the run (an epoch's end has its own checkpoint)."""
        every = self.cfg.checkpoint_every_steps
        return every is not None and (epoch * self.iters_per_epoch + steps_done) % every == 0

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, share: float = 1.0,
                   meters: MeterSet | None = None, *, step: int) -> None:
        """One joint optimizer step: `adabits.joint_step` (forward + backward per bit-width, one gradient
        all-reduce), then the update. `share` is this process's fraction of the global batch (the weight of its
        gradients in the sum); `step` the step's index in the run (it chooses a sandwich sample's bit-widths)."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        tutor: torch.Tensor | None = None
        if self.teacher is not None:
            with torch.no_grad(), precision.autocast(cfg.precision, self.device):
                tutor = self.teacher.model(images).float()
        grad_sync = self.grad_sync
        # a skipped step must leave the BN statistics and observer ranges as they were too (its forward moved them)
        buffers = ({name: buf.clone() for name, buf in self.model.named_buffers()} if cfg.nonfinite == "skip"
                   else None)
        results = adabits.joint_step(
            self.forward, images, labels, self.criterion, bits=self.step_bits.at(step), joint_loss=cfg.joint_loss,
            distill=cfg.distill, distill_weight=cfg.distill_weight, distill_temperature=cfg.distill_temperature,
            teacher_logits=tutor, autocast=lambda: precision.autocast(cfg.precision, self.device),
            grad_scaler=self.grad_scaler, reduce_gradients=None if grad_sync is None else lambda: grad_sync(share),
            assignments=random_assignments(self.model, cfg.mixed_assignments, cfg.random_seed, step))
        uniform = {b: r for b, r in results.items() if not isinstance(b, str)}  # the mixed ones have no meters
        verdict = self.guard.verdict({b: r.label_loss for b, r in uniform.items()}, self.model.parameters())
        if buffers is not None and bool(verdict.any()):
            self.guard.skipped += 1
            with torch.no_grad():
                for name, buf in self.model.named_buffers():
                    buf.copy_(buffers[name])
            return  # nothing learned from this batch: weights, buffers, optimizer, schedule and meters as they were
        self.guard.record(step, verdict)
        if meters is not None:
            for bits, result in uniform.items():
                meters[bits].update(result.logits, labels, result.label_loss)
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        self.scheduler.step()

    def _reduced(self, meters: MeterSet) -> MeterSet:
        """Sums of every process (samples, loss sums, correct counts), so the metrics cover the whole data."""
        if self.dist.enabled:
            meters.reduce_(distributed.all_reduce_sum_)
        return meters

    def evaluate(self) -> dict[Bits, dict[str, float]]:
        """Loss and top-k error of every bit-width on the whole validation set (BN in eval mode)."""
        return self.evaluate_meters().summary()

    @torch.no_grad()
    def evaluate_meters(self) -> MeterSet:
        """The sums behind `evaluate`, over every process's part of the validation set."""
        if self.dist.enabled:
            distributed.average_buffers(self.model)
        meters = evaluate_meters(self.model, self.loaders.val, self.bits, self.cfg.topk, criterion=self.criterion,
                                 device=self.device, forward=self.forward)
        return self._reduced(meters)

    # ---------------------------------------------------------------- the run
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the best epoch's validation metrics."""
        try:
            return self._fit()
        finally:
            self.session.release()

    def _fit(self) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        records = RunRecords(self.run_dir, cfg, self.echo) if self.dist.is_main else None
        if self.resumed is not None and self.resumed.history is None:  # an older checkpoint: the folder's rows
            state.history = records.rows_up_to(self.start_epoch) if records else []
        if records is not None:
            records.start(self.resumed, state.history)
        if self.stop is not None:
            self.stop.polled = True
        self.echo(f"run folder: {self.run_dir}  ({self.iters_per_epoch} steps/epoch, "
                  f"bits {bits_text(self.bits, 'config')}, device {self.device})")
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.num_epochs):
                t0 = time.time()
                lr = self.start_lr(epoch)  # the lr the epoch starts with
                train = self.train_one_epoch(epoch)
                divergence.check_epoch(epoch, train, self.shape.num_classes, cfg.lr, self.run_dir)
                val = self.evaluate()
                seconds = time.time() - t0
                mean_top1 = sum(v["top1_error"] for v in val.values()) / len(val)
                improved = mean_top1 < state.best["mean_top1_error"]
                if improved:
                    state.best = {"mean_top1_error": mean_top1, "epoch": epoch, "val": val}
                lines = report.metrics_lines(epoch, lr, seconds, train, val)
                state.history.extend(lines)
                self.checkpoints.epoch_end(epoch, improved, self.start_lr(epoch + 1))  # every rank takes part
                if records is not None:
                    records.epoch(epoch, lr, seconds, train, val, lines, state.best, self.bits)
                if epoch + 1 < cfg.num_epochs:
                    self._stop_if_requested()
        except KeyboardInterrupt:
            where = self.checkpoints.describe_last("none yet (interrupted in the first epoch)")
            raise Interrupted(f"interrupted during epoch {epoch + 1}. Last checkpoint: {where}. "
                              "Run the same command again to resume.") from None
        finally:
            if records is not None:
                records.close()
        if records is not None:
            records.results(state.best, self.bits)
        if self.guard.skipped:
            self.echo(f"note: nonfinite: skip skipped {self.guard.skipped} step(s) whose loss or gradients were not finite")
        return state.best

    def _stop_requested(self) -> bool:
        """Whether a scheduler's signal asks to stop, the same answer on every process."""
        return self.stop is not None and self.session.on_any_rank(self.stop.signal is not None, self.device)

    def _stop_if_requested(self) -> None:
        """After a checkpoint: stop, naming it, when a scheduler's signal asked to."""
        if self.stop is not None and self._stop_requested():
            last = self.checkpoints.last
            where = f"{last[0]} holds the run {last[1]}" if last else "no checkpoint was written"
            raise Interrupted(f"saved and stopped: {where}. Run the same command again to resume.")


def _postfix(summary: dict[Bits, dict[str, float]]) -> str:
    return " ".join(f"{bits_text(b)} {s['loss']:.3f}/{100 * (1 - s['top1_error']):.1f}%" for b, s in summary.items())
