"""Joint AdaBits training (SPEC section 5): one optimizer step per batch on the sum of per-bit losses.

`Trainer(cfg).prepare()` builds and checks everything that can fail on bad input (data, model,
checkpoints) before anything is written; `fit()` then trains exactly num_epochs epochs, evaluates
every bit-width after each one and writes checkpoints and reports into the run folder.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

import adabits

from ..data import Loaders, build_loaders
from ..quant.clipping import init_clipping_levels
from . import checkpoint, report
from .build import build_model, load_pretrained, resolve_device
from .config import TrainConfig
from .errors import CheckpointError, UserError
from .metrics import MeterSet
from .optim import build_optimizer, build_scheduler

Printer = Callable[[str], None]


class Interrupted(UserError):
    """Ctrl-C during training; the message says which checkpoint is the last valid one."""


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, cfg: TrainConfig, echo: Printer = print) -> None:
        self.cfg = cfg
        self.echo = echo
        self.run_dir = Path(cfg.log_dir) / (cfg.run_name or "run")
        self.bits = cfg.train_bits
        self.start_epoch = 0
        self.best: dict[str, Any] = {"mean_top1_error": math.inf, "epoch": -1, "val": {}}

    # ---------------------------------------------------------------- setup (no writes)
    def prepare(self) -> "Trainer":
        cfg = self.cfg
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.random_seed)
        self.loaders: Loaders = build_loaders(cfg, self.device)
        if cfg.num_classes is not None and cfg.num_classes < self.loaders.num_classes:
            raise UserError(f"num_classes {cfg.num_classes} is smaller than the {self.loaders.num_classes} "
                            f"classes of dataset {cfg.dataset}")
        self.model = build_model(cfg, cfg.num_classes or self.loaders.num_classes,
                                 cfg.in_chans or self.loaders.in_chans)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward: nn.Module = torch.compile(self.model) if cfg.compile else self.model
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.iters_per_epoch = len(self.loaders.train)
        if cfg.max_iters_per_epoch:
            self.iters_per_epoch = min(self.iters_per_epoch, cfg.max_iters_per_epoch)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.iters_per_epoch)
        if cfg.test_only:
            self._load_for_test()
            return self
        resume = self._resume_path()
        if resume is not None:
            self._restore(checkpoint.read_training_checkpoint(resume, cfg.model, self.bits), resume)
        else:
            for note in load_pretrained(self.model, cfg):
                self.echo(note)
            if cfg.alpha_init == "mse":
                self._init_clipping_levels()
        return self

    def _init_clipping_levels(self) -> None:
        """Choose every PACT alpha from the data (adabits.quant.clipping) before the first step."""
        batches = [images for images, _ in itertools.islice(iter(self.loaders.train), self.cfg.alpha_init_batches)]
        levels = init_clipping_levels(self.model, torch.cat(batches))
        summary = ", ".join(f"{bits}: {min(v.values()):.2f}-{max(v.values()):.2f}" for bits, v in levels.items() if v)
        self.echo(f"clipping levels chosen from {len(batches)} training batches (alpha range per bits: {summary})")

    def _resume_path(self) -> Path | None:
        if self.cfg.resume:
            path = Path(self.cfg.resume)
            path = path / "latest_checkpoint.pt" if path.is_dir() else path
            if not path.is_file():
                raise CheckpointError(f"resume: checkpoint not found: {path}")
            return path
        latest = self.run_dir / "latest_checkpoint.pt"
        return latest if latest.is_file() else None

    def _restore(self, ckpt: dict[str, Any], path: Path) -> None:
        checkpoint.load_weights(self.model, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: optimizer state does not fit this config ({exc})") from None
        checkpoint.set_rng_state(ckpt["rng"])
        self.start_epoch = int(ckpt["epoch"])
        self.best = ckpt["best"]
        self.echo(f"resuming from {path} after epoch {self.start_epoch}")

    def _load_for_test(self) -> None:
        cfg = self.cfg
        if cfg.pretrained_file or cfg.fp_pretrained_file:
            for note in load_pretrained(self.model, cfg):
                self.echo(note)
            self.bits = list(adabits.get_bits_list(self.model))  # with any calibrated bit-widths
            return
        path = Path(cfg.resume) if cfg.resume else self.run_dir / "best_model.pt"
        if not path.is_file():
            raise CheckpointError(f"test_only needs weights: set pretrained_file=PATH, or train first "
                                  f"(no checkpoint at {path})")
        ckpt = checkpoint.read_training_checkpoint(path, cfg.model, self.bits)
        checkpoint.load_weights(self.model, ckpt["model"], path)
        self.echo(f"loaded {path} (epoch {ckpt['epoch']})")

    # ---------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> dict[int, dict[str, float]]:
        """One pass over the training set; per batch: for each bit-width forward + backward, then one step."""
        cfg, model = self.cfg, self.model
        model.train()
        loader = self.loaders.train
        loader.set_epoch(epoch)
        meters = MeterSet(self.bits, cfg.topk, self.device)
        bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.num_epochs}", leave=False,
                   disable=not cfg.progress, dynamic_ncols=True, file=sys.stderr)
        done = 0
        for step, (images, labels) in enumerate(loader):
            if step >= self.iters_per_epoch:
                break
            self.optimizer.zero_grad(set_to_none=True)
            for bits in self.bits:
                adabits.set_bits(model, bits)
                logits = self.forward(images)
                loss = self.criterion(logits, labels)
                loss.backward()
                meters[bits].update(logits.detach(), labels, loss.detach())
            self.optimizer.step()
            self.scheduler.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.iters_per_epoch:
                bar.update(step + 1 - done)
                done = step + 1
                bar.set_postfix_str(_postfix(meters.summary()), refresh=False)
        bar.close()
        return meters.summary()

    @torch.no_grad()
    def evaluate(self) -> dict[int, dict[str, float]]:
        """Loss and top-k error of every bit-width on the whole validation set (BN in eval mode)."""
        self.model.eval()
        meters = MeterSet(self.bits, self.cfg.topk, self.device)
        for images, labels in self.loaders.val:
            for bits in self.bits:
                adabits.set_bits(self.model, bits)
                logits = self.forward(images)
                meters[bits].update(logits, labels, self.criterion(logits, labels))
        return meters.summary()

    def _state(self, epoch_done: int) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT, "model_name": self.cfg.model, "bits_list": list(self.bits),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epoch_done, "best": self.best,
            "rng": checkpoint.rng_state(), "config": self.cfg.model_dump(),
        }

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the best epoch's validation metrics."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        writer = report.RunWriter(self.run_dir)
        latest = self.run_dir / "latest_checkpoint.pt"
        self.echo(f"run folder: {self.run_dir}  ({self.iters_per_epoch} steps/epoch, bits {self.bits}, "
                  f"device {self.device})")
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.num_epochs):
                t0 = time.time()
                lr = self.optimizer.param_groups[0]["lr"]  # the lr the epoch starts with
                train = self.train_one_epoch(epoch)
                diverged = [b for b, m in train.items() if not math.isfinite(m["loss"])]
                if diverged:
                    raise UserError(f"training diverged in epoch {epoch + 1}: the loss at bits {diverged} is not "
                                    f"finite; lower lr (now {cfg.lr}) or add warmup_epochs. Checkpoints kept "
                                    f"in {self.run_dir} are from the epochs before.")
                val = self.evaluate()
                seconds = time.time() - t0
                mean_top1 = sum(v["top1_error"] for v in val.values()) / len(val)
                if mean_top1 < self.best["mean_top1_error"]:
                    self.best = {"mean_top1_error": mean_top1, "epoch": epoch, "val": val}
                    checkpoint.save_atomic(self._state(epoch + 1), self.run_dir / "best_model.pt")
                checkpoint.save_atomic(self._state(epoch + 1), latest)
                writer.write_epoch(epoch, lr, seconds, train, val)
                self.echo(report.epoch_table(epoch, cfg.num_epochs, lr, seconds, train, val))
                self._write_results()
        except KeyboardInterrupt:
            where = (f"{latest} (after epoch {epoch})" if latest.is_file()
                     else "none yet (interrupted in the first epoch)")
            raise Interrupted(f"interrupted during epoch {epoch + 1}. Last checkpoint: {where}. "
                              "Run the same command again to resume.") from None
        finally:
            writer.close()
        self._write_results()
        return self.best

    def _write_results(self) -> None:
        if not self.best["val"]:
            return
        title = f"{self.cfg.model} on {self.cfg.dataset}, bits {self.bits}"
        val = {int(b): v for b, v in self.best["val"].items()}
        (self.run_dir / "results.md").write_text(report.results_markdown(title, self.best["epoch"], val))
        report.plot_accuracy(self.run_dir / "accuracy_vs_bits.png", title, val)


def _postfix(summary: dict[int, dict[str, float]]) -> str:
    return " ".join(f"{b}b {s['loss']:.3f}/{100 * (1 - s['top1_error']):.1f}%" for b, s in summary.items())
