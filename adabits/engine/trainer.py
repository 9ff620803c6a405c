"""Joint AdaBits training (Jin, Yang, Liao, CVPR 2020): one optimizer step per batch on the per-bit losses
summed (the seed) or averaged, optionally distilled and over a sandwich sample of the bit-widths (docs/training.md).

`Trainer(cfg).prepare()` locks the run folder, then builds and checks everything that can fail on
bad input (data, model, checkpoints, config changes on resume) before anything else is written;
`fit()` then trains exactly num_epochs epochs, evaluates every bit-width after each one and writes
checkpoints and reports into the run folder. The lock is held to the end of `fit` (docs/runs.md).

Under torchrun (or `distributed: true`) every process trains on its part of each global batch and
the gradients meet in one all-reduce per optimizer step (engine/distributed.py); metrics are summed
over processes, and rank 0 alone writes and prints.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

import torch
from torch import nn
from tqdm import tqdm

import adabits

from ..analysis.evaluation import evaluate_meters as evaluate
from ..analysis.metrics import MeterSet
from ..atomic import atomic_write
from ..data import DataShape, Loaders, build_loaders
from ..errors import CheckpointError, TrainingDiverged, UserError
from ..joint.gradients import GradientAllReduce
from ..joint.objective import IN_STEP_TEACHERS
from ..joint.sampling import StepBits
from ..joint.step import joint_step
from ..quant.bitwidth import Bits, bits_label
from ..quant.clipping import init_clipping_levels
from . import backends, checkpoint, distributed, precision, report, resume_policy, run_folder, step_checkpoint, teacher
from .build import build_model, load_pretrained, resolve_device
from .config import TrainConfig
from .loading import (
    SHAPE_KEY,
    apply_weights,
    resume_path,
    run_dir,
    shape_record,
    weights_source,
)
from .optim import build_optimizer, build_scheduler
from .write_errors import reported

Printer = Callable[[str], None]
GRAD_SCALER_KEY = "grad_scaler"  # fp16's loss scale, in the checkpoint
T = TypeVar("T")


#: an epoch's mean loss above this many times chance's (ln of the class count) is a diverged run, not a slow one
DIVERGED_LOSS_FACTOR = 100.0


class Interrupted(UserError):
    """Ctrl-C during training; the message says which checkpoint is the last valid one."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _silent(_msg: str) -> None:
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig, echo: Printer = print, dist_env: distributed.DistEnv | None = None,
                 from_start: bool = False) -> None:
        """`dist_env` overrides what the torchrun environment says (e.g. DistEnv() for a single-process run);
        `from_start` makes a test_only run evaluate the fp_pretrained_file start (see engine/loading.py)."""
        self.cfg = cfg
        self.dist = dist_env if dist_env is not None else distributed.detect(cfg.distributed)
        self.echo = echo if self.dist.is_main else _silent
        self.run_dir = run_dir(cfg)
        self.from_start = from_start
        self.bits = cfg.train_bits
        self.start_epoch = 0
        self.best: dict[str, Any] = {"mean_top1_error": math.inf, "epoch": -1, "val": {}}
        self.history: list[str] | None = []  # metrics.jsonl lines so far; None: an older checkpoint kept none
        self.resumed: tuple[Path, list[resume_policy.Change]] | None = None  # the checkpoint, the keys changed
        self._lock: run_folder.RunLock | None = None
        self.position: step_checkpoint.Position | None = None  # where a resumed checkpoint stands in its epoch
        self.saved: tuple[Path, str] | None = None  # the last valid checkpoint and where it stands, for Ctrl-C

    # ---------------------------------------------------------------- setup (the lock is its one write)
    def prepare(self) -> "Trainer":
        """Lock the run folder (a training run), then build everything; a failure releases the lock again."""
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = distributed.device_for(self.dist, resolve_device(cfg.device))
        backends.require_compiler(self.device, [key for key in ("compile", "compile_quantizers") if getattr(cfg, key)])
        backends.configure(self.device, cfg.cudnn_benchmark)
        if self.dist.enabled:
            self._join_process_group()
        if not cfg.test_only:
            self._on_main(self._claim_run_folder)
        try:
            self._build()
        except BaseException:
            self._release()
            raise
        return self

    def _build(self) -> None:
        """Data, model, optimizer and the state to start from (a checkpoint or the pretrained weights)."""
        cfg = self.cfg
        seed = cfg.random_seed + self.dist.rank if cfg.use_diff_seed else cfg.random_seed
        torch.manual_seed(seed)
        self.loaders: Loaders = build_loaders(cfg, self.device, self.dist.rank, self.dist.world_size)
        if cfg.num_classes is not None and cfg.num_classes < self.loaders.num_classes:
            raise UserError(f"num_classes {cfg.num_classes} is smaller than the {self.loaders.num_classes} "
                            f"classes of dataset {cfg.dataset}")
        self.shape = DataShape(cfg.num_classes or self.loaders.num_classes, cfg.in_chans or self.loaders.in_chans,
                               self.loaders.image_size)
        self.model = build_model(cfg, self.shape.num_classes, self.shape.in_chans)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to takes it
        if cfg.compile_quantizers:
            adabits.compile_quantizers(self.model)
        self.grad_scaler = precision.grad_scaler(cfg.precision, self.device)
        if cfg.sync_bn and self.dist.enabled:
            self.model = distributed.convert_sync_bn(self.model, self.device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.step_bits = StepBits(self.bits, cfg.sandwich_middle, cfg.random_seed, cfg.distill in IN_STEP_TEACHERS)
        self.teacher: teacher.FloatTeacher | None = None
        if cfg.distill == "float" and not cfg.test_only:
            self.teacher = teacher.build_float_teacher(cfg, self.shape.num_classes, self.shape.in_chans, self.device)
        self.iters_per_epoch = len(self.loaders.train)
        if cfg.max_iters_per_epoch:
            self.iters_per_epoch = min(self.iters_per_epoch, cfg.max_iters_per_epoch)
        if cfg.test_only:  # evaluation only: no optimizer, no scheduler
            self._load_for_test()
        else:
            self.optimizer = build_optimizer(self.model, cfg)
            self.scheduler = build_scheduler(self.optimizer, cfg, self.iters_per_epoch)
            resume = self._agreed_resume_path()
            if resume is not None:
                self._restore(checkpoint.read_training_checkpoint(resume, cfg.model, self.bits), resume)
            else:
                for note in load_pretrained(self.model, cfg):
                    self.echo(note)
                if cfg.alpha_init == "mse":
                    self._init_clipping_levels()
                elif cfg.alpha_init == "calibrate":
                    self._calibrate()
        self._wrap_model()

    def _on_main(self, decide: Callable[[], T]) -> T:
        """`decide()` run by rank 0 alone; its result, or the UserError it raised, on every rank."""
        if not self.dist.enabled:
            return decide()
        outcome: tuple[T | None, UserError | None] = (None, None)
        if self.dist.is_main:
            try:
                outcome = (decide(), None)
            except UserError as exc:
                outcome = (None, exc)
        result, error = distributed.broadcast_from_main(outcome if self.dist.is_main else None)
        if error is not None:
            raise error
        return result

    def _claim_run_folder(self) -> None:
        """Lock the run folder for this run, then remove the temp files an earlier, killed save left there."""
        self._lock = run_folder.RunLock(self.run_dir).acquire()
        removed = run_folder.remove_stale_temps(self.run_dir)
        if removed:
            self.echo(f"note: removed {len(removed)} temp file(s) of an interrupted save in {self.run_dir}: "
                      f"{', '.join(removed)}")

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _join_process_group(self) -> None:
        """Check what can be checked alone, join the group, then check that every rank runs this config."""
        cfg = self.cfg
        distributed.per_process_batch(cfg.batch_size, self.dist.world_size)
        backend = distributed.resolve_backend(cfg.dist_backend, self.device)
        distributed.init_process_group(self.dist, backend)
        distributed.check_same_config(cfg.model_dump(), self.dist)
        self.echo(f"distributed: {self.dist.world_size} processes, backend {backend}, "
                  f"global batch {cfg.batch_size} ({cfg.batch_size // self.dist.world_size} per process)")
        note = distributed.restart_note()
        if note:
            self.echo(f"note: {note}")

    def _wrap_model(self) -> None:
        """The module the steps call: DDP around the model when distributed, compiled when asked."""
        wrapped: nn.Module = self.model
        self.grad_sync: GradientAllReduce | None = None
        if self.dist.enabled:
            wrapped = distributed.wrap(self.model, self.device)
            self.grad_sync = GradientAllReduce(self.model.parameters())
        self.forward: nn.Module = cast(nn.Module, torch.compile(wrapped)) if self.cfg.compile else wrapped

    def _agreed_resume_path(self) -> Path | None:
        """The checkpoint to resume from, decided by rank 0 and the same on every rank (or its error, on every rank)."""
        def decide() -> str | None:
            path = self._resume_path()
            return None if path is None else str(path)

        path = self._on_main(decide)
        if path is not None and not Path(path).is_file():
            raise CheckpointError(f"rank {self.dist.rank} cannot read {path}, the checkpoint rank 0 resumes from; "
                                  "log_dir must be storage that every node shares")
        return Path(path) if path else None

    def close(self) -> None:
        """Release the run folder and leave the process group (when one was joined); safe to call twice."""
        self._release()
        if self.dist.enabled:
            distributed.destroy_process_group()

    def _init_clipping_levels(self) -> None:
        """Choose every PACT alpha from the data (adabits.quant.clipping) before the first step."""
        batches = [images for images, _ in itertools.islice(iter(self.loaders.train), self.cfg.alpha_init_batches)]
        levels = init_clipping_levels(self.model, torch.cat(batches))
        summary = ", ".join(f"{bits}: {min(v.values()):.2f}-{max(v.values()):.2f}" for bits, v in levels.items() if v)
        self.echo(f"clipping levels chosen from {len(batches)} training batches (alpha range per bits: {summary})")

    def _check_diverged(self, epoch: int, train: dict[Bits, dict[str, float]]) -> None:
        """TrainingDiverged when an epoch's mean loss at some bit-width is not finite, or more than
        DIVERGED_LOSS_FACTOR times the loss of guessing uniformly (ln of the class count): an exploding run whose
        loss is still a number (lr 1e6 on the float ResNet-20: a mean loss of about 1e6) says so too."""
        chance = math.log(self.shape.num_classes)
        diverged = {b: m["loss"] for b, m in train.items()
                    if not math.isfinite(m["loss"]) or m["loss"] > DIVERGED_LOSS_FACTOR * chance}
        if diverged:
            losses = ", ".join(f"{report.show_bits([b])}: {loss:.3g}" for b, loss in diverged.items())
            raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: mean loss {losses}, where guessing gives "
                                   f"{chance:.3g}; lower lr (now {self.cfg.lr}) or add warmup_epochs. Checkpoints "
                                   f"kept in {self.run_dir} are from the epochs before.")

    def _calibrate(self) -> None:
        """Calibrate every bit-width on the first training batches (adabits.calibrate) before the first step."""
        batches = [images for images, _ in itertools.islice(iter(self.loaders.train), self.cfg.alpha_init_batches)]
        report = adabits.calibrate(self.model, batches)
        self.echo(str(report))

    def _resume_path(self) -> Path | None:
        """`resume`, else the run folder's latest_checkpoint.pt; refused where the folder holds records but none."""
        named = resume_path(self.cfg)
        if named is not None:
            note = run_folder.check_resume_into(self.run_dir, named)
            if note:
                self.echo(f"note: {note}")
            return named
        return run_folder.previous_checkpoint(self.run_dir)

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        """Continue the checkpoint's run: refused config changes stop here, allowed ones are applied and noted."""
        checkpoint.check_resumable(ckpt, path)
        epochs_done = ckpt["epoch"]
        changes = resume_policy.check_resume(ckpt["config"], self.cfg, epochs_done, path)
        adabits.load_weights(self.model, ckpt["model"], name=str(path))
        if self.teacher is not None:
            teacher.check_same(self.teacher, ckpt.get(teacher.TEACHER_KEY), self.cfg, path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.grad_scaler is not None and GRAD_SCALER_KEY in ckpt:  # else (fp32 or bf16 before): a fresh scale
                self.grad_scaler.load_state_dict(ckpt[GRAD_SCALER_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit this config ({exc})") from None
        try:
            checkpoint.set_rng_state(ckpt["rng"])
            best = dict(ckpt["best"])
            best["mean_top1_error"] = float(best["mean_top1_error"])
            best["epoch"], best["val"] = int(best["epoch"]), dict(best["val"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: the random state or best-epoch record is damaged ({type(exc).__name__}: "
                                  f"{exc}); resume from another checkpoint") from None
        self.start_epoch = epochs_done
        self.best = best
        self.history = ckpt.get(checkpoint.METRICS_KEY)
        self.resumed = (path, changes)
        self.position = step_checkpoint.read(ckpt, path, self.dist.world_size, self.iters_per_epoch)
        where = self.position.describe() if self.position else f"after epoch {self.start_epoch}"
        self.saved = (path, where)
        self.echo(f"resuming from {path} {where}")
        for change in changes:
            self.echo(f"note: resume: {change} ({resume_policy.RESUME_RULES[change.key][1]}; applied)")

    def _load_for_test(self) -> None:
        """The trained weights `weights_source` names (the one decision, shared with the deploy commands)."""
        source = weights_source(self.cfg, from_start=self.from_start)
        for note in (source.note, apply_weights(self.model, source, self.cfg)):
            if note:
                self.echo(note)
        self.bits = list(adabits.get_bits_list(self.model))  # with any calibrated bit-widths

    # ---------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> dict[Bits, dict[str, float]]:
        """One pass over the training set; per batch: for each bit-width forward + backward, then one step.

        A run resumed mid-epoch starts at the step its checkpoint stands at, with that step's meters,
        BN statistics and random states, and skips the batches before it (`iter_from`).
        """
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
            if self._step_checkpoint_due(epoch, step + 1):
                self._save_latest(epoch, step + 1, lr, meters)
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.iters_per_epoch:
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
        step_checkpoint.restore(position, self.dist.rank, self.dist.world_size, self.model, meters)
        return position.step

    def _step_checkpoint_due(self, epoch: int, steps_done: int) -> bool:
        """Every `checkpoint_every_steps` optimizer steps of the run, except at an epoch's end (its own checkpoint follows)."""
        every = self.cfg.checkpoint_every_steps
        return (every is not None and steps_done < self.iters_per_epoch
                and (epoch * self.iters_per_epoch + steps_done) % every == 0)

    def _save_latest(self, epoch: int, step: int, lr: float, meters: MeterSet | None,
                     state: dict[str, Any] | None = None) -> None:
        """latest_checkpoint.pt at `step` of epoch `epoch` (step 0: its start, after the epochs before it)
        with every process's state; `lr` is the one the epoch started with, `state` the run's `_state`
        when the caller has already built it.

        Every rank takes part (its state is gathered); rank 0 writes, atomically.
        """
        ranks = step_checkpoint.gather(step_checkpoint.rank_state(self.model, meters), self.dist.enabled)
        latest = self.run_dir / run_folder.LATEST
        if self.dist.is_main:
            kept = f"{self.saved[0]} still holds the checkpoint {self.saved[1]}" if self.saved else "no checkpoint was written yet"
            with reported(latest, kept):
                base = self._state(epoch) if state is None else state
                checkpoint.save_atomic({**base, **step_checkpoint.record(epoch, step, lr, ranks)}, latest)
        self.saved = (latest, step_checkpoint.describe(epoch, step))

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, share: float = 1.0,
                   meters: MeterSet | None = None, *, step: int) -> None:
        """One joint optimizer step: forward + backward per bit-width, then one gradient all-reduce, then the update.

        `share` is this process's fraction of the global batch (the weight of its gradients in the sum);
        `step` the step's index in the run, which chooses a sandwich sample's bit-widths (joint/sampling.py).
        The meters record each bit-width's label loss, whatever the objective (joint/objective.py).
        """
        self.optimizer.zero_grad(set_to_none=True)
        tutor: torch.Tensor | None = None
        if self.teacher is not None:
            with torch.no_grad(), precision.autocast(self.cfg.precision, self.device):
                tutor = self.teacher.model(images).float()
        cfg = self.cfg
        results = joint_step(
            self.forward, images, labels, self.criterion, bits=self.step_bits.at(step), joint_loss=cfg.joint_loss,
            distill=cfg.distill, distill_weight=cfg.distill_weight, distill_temperature=cfg.distill_temperature,
            teacher_logits=tutor, autocast=lambda: precision.autocast(cfg.precision, self.device),
            grad_scaler=self.grad_scaler,
            # the gradients meet once, after every bit-width's backward, weighted by this process's share
            reduce_gradients=None if self.grad_sync is None else lambda: self.grad_sync(share),  # type: ignore[misc]
        )
        if meters is not None:
            for bits, result in results.items():
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
        meters = evaluate(self.model, self.loaders.val, self.bits, self.cfg.topk, criterion=self.criterion,
                          device=self.device, forward=self.forward)
        return self._reduced(meters)

    def _state(self, epoch_done: int) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT, "model_name": self.cfg.model, "bits_list": list(self.bits),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epoch_done, "best": self.best,
            "rng": checkpoint.rng_state(), "config": self.cfg.model_dump(), SHAPE_KEY: shape_record(self.shape),
            checkpoint.METRICS_KEY: list(self.history or []),
            **({teacher.TEACHER_KEY: self.teacher.digest} if self.teacher is not None else {}),
            **({GRAD_SCALER_KEY: self.grad_scaler.state_dict()} if self.grad_scaler is not None else {}),
        }

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the best epoch's validation metrics."""
        try:
            return self._fit()
        finally:
            self._release()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        main = self.dist.is_main
        if self.history is None:  # an older checkpoint: the run folder's rows up to its epoch are the record
            self.history = self._rows_in_folder() if main else []
        if main:
            self._write_config()
            with reported(self.run_dir / run_folder.METRICS):
                note = report.reconcile_metrics(self.run_dir / run_folder.METRICS, self.history, self.start_epoch)
            if note:
                self.echo(f"note: {note}")
        purge = self.start_epoch + 1 if self.resumed else None
        writer = report.RunWriter(self.run_dir, cfg.tensorboard, self.echo, purge) if main else None
        self.echo(f"run folder: {self.run_dir}  ({self.iters_per_epoch} steps/epoch, "
                  f"bits {report.show_bits(self.bits)}, device {self.device})")
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.num_epochs):
                t0 = time.time()
                lr = self.start_lr(epoch)  # the lr the epoch starts with
                train = self.train_one_epoch(epoch)
                self._check_diverged(epoch, train)
                val = self.evaluate()
                seconds = time.time() - t0
                mean_top1 = sum(v["top1_error"] for v in val.values()) / len(val)
                improved = mean_top1 < self.best["mean_top1_error"]
                if improved:
                    self.best = {"mean_top1_error": mean_top1, "epoch": epoch, "val": val}
                lines = report.metrics_lines(epoch, lr, seconds, train, val)
                self.history.extend(lines)
                self._save_checkpoints(epoch, improved)  # every rank: latest gathers each process's random states
                if writer is not None:  # rank 0
                    with reported(writer.jsonl, f"the checkpoint after epoch {epoch + 1} holds these rows, "
                                                "and a resume restores them"):
                        writer.write_epoch(epoch, lr, seconds, train, val, lines)
                    self.echo(report.epoch_table(epoch, cfg.num_epochs, lr, seconds, train, val))
                    self._write_results()
        except KeyboardInterrupt:
            where = f"{self.saved[0]} ({self.saved[1]})" if self.saved else "none yet (interrupted in the first epoch)"
            raise Interrupted(f"interrupted during epoch {epoch + 1}. Last checkpoint: {where}. "
                              "Run the same command again to resume.") from None
        finally:
            if writer is not None:
                writer.close()
        if main:
            self._write_results()
        return self.best

    def _save_checkpoints(self, epoch: int, improved: bool) -> None:
        """best_model.pt (rank 0, when the epoch improved on it), then latest_checkpoint.pt (every rank takes
        part, rank 0 writes); a refused write is one line."""
        state = self._state(epoch + 1) if self.dist.is_main else None  # one state dict for both files
        if improved and state is not None:
            with reported(self.run_dir / run_folder.BEST, "the previous best_model.pt is unchanged"):
                checkpoint.save_atomic(state, self.run_dir / run_folder.BEST)
        self._save_latest(epoch + 1, 0, self.start_lr(epoch + 1), None, state)

    def _write_config(self) -> None:
        """config.yaml: the config this run trains with, after comment lines naming each resume and its changes."""
        path = self.run_dir / "config.yaml"
        comments: list[str] = []
        if self.resumed is not None:
            if path.is_file():
                text = path.read_text().splitlines()
                comments = list(itertools.takewhile(lambda line: line.startswith("#"), text))
            source, changes = self.resumed
            changed = f"; changed: {', '.join(str(c) for c in changes)}" if changes else ""
            comments.append(f"# resumed from {source} after epoch {self.start_epoch}{changed}")
        with reported(path), atomic_write(path, "w") as f:
            f.write("".join(line + "\n" for line in comments) + self.cfg.to_yaml())

    def _rows_in_folder(self) -> list[str]:
        """metrics.jsonl's whole rows of the epochs up to the checkpoint's (the record of an older checkpoint)."""
        path = self.run_dir / run_folder.METRICS
        lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
        return [line for line in lines if line.endswith("\n")
                and (epoch := report.line_epoch(line)) is not None and epoch <= self.start_epoch]

    def _write_results(self) -> None:
        if not self.best["val"]:
            return
        title = f"{self.cfg.model} on {self.cfg.dataset}, bits {self.bits}"
        val = self.best["val"]
        results = self.run_dir / "results.md"
        with reported(results), atomic_write(results, "w") as f:
            f.write(report.results_markdown(title, self.best["epoch"], val))
        plot = self.run_dir / "accuracy_vs_bits.png"
        with reported(plot):
            report.plot_accuracy(plot, title, val)


def _postfix(summary: dict[Bits, dict[str, float]]) -> str:
    return " ".join(f"{bits_label(b)} {s['loss']:.3f}/{100 * (1 - s['top1_error']):.1f}%"
                    for b, s in summary.items())
