"""Distributed training on CPU with Gloo: 2 processes against 1, sharding, collectives per step, errors, restarts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from _dist_helpers import (
    FROZEN_BN_MODEL,
    CollectiveCounter,
    free_port,
    kill_second_worker_when,
    run_processes,
    torchrun_env,
)
from _engine_helpers import TINY, tiny_args, tiny_config

from adabits import cli
from adabits.data import TensorLoader, ToModelInput
from adabits.engine import ConfigError, Trainer, build_config

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with Gloo is not available")
REPO = Path(__file__).resolve().parents[2]

# joint training over 3 bit-widths; 64 samples / global batch 16 = 4 steps; 101 validation samples
EXACT: dict[str, Any] = {**TINY, "model": FROZEN_BN_MODEL, "bits_list": [8, 6, 4], "synthetic_train_size": 64,
                         "synthetic_val_size": 101, "eval_batch_size": 16, "normalize": True,
                         "lr_scheduler": "constant", "num_epochs": 1}
EXACT.pop("depth")


def quiet(_msg: str) -> None:
    pass


def _train_one_epoch(raw: dict[str, Any]) -> dict[str, Any]:
    """One epoch of joint training; counts the collectives of the epoch and DDP's own gradient syncs."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    trainer = Trainer(build_config(raw), echo=quiet).prepare()
    ddp_syncs = []

    def counting_hook(state, bucket):  # no annotations: DDP checks them against dist.GradBucket
        ddp_syncs.append(1)
        return default_hooks.allreduce_hook(state, bucket)

    if dist.is_initialized():
        trainer.forward.register_comm_hook(None, counting_hook)
    counter = CollectiveCounter()
    trainer.train_one_epoch(0)
    collectives = counter.calls
    counter.restore()
    val = trainer.evaluate_meters()
    trainer.checkpoints.epoch_end(0, improved=True, next_lr=0.0)  # best_model.pt, which `adabits test` evaluates below
    from adabits.engine.deploy import evaluate_trained_metrics

    _, tested = evaluate_trained_metrics(build_config({**raw, "test_only": True}), dist=trainer.dist)
    return {"state": {k: v.clone() for k, v in trainer.model.state_dict().items()},
            "steps": trainer.iters_per_epoch, "collectives": collectives, "ddp_syncs": len(ddp_syncs),
            "val": {b: m.sums.tolist() for b, m in val.meters.items()}, "tested": tested,
            "val_summary": val.summary()}


def _scenarios(rank: int, raw: dict[str, Any]) -> dict[str, Any]:
    """Everything the 2-process tests need from one spawn (starting processes is the slow part)."""
    try:  # every rank must notice that rank 1 was started with another lr
        Trainer(build_config({**raw, "lr": 0.05 + 0.01 * rank}), echo=quiet).prepare()
        mismatch = {}
    except ConfigError as exc:
        mismatch = {"error": str(exc)}
    return {"mismatch": mismatch, "exact": _train_one_epoch(raw)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The results of each of 2 processes and of the same config in this (single) process."""
    tmp = tmp_path_factory.mktemp("dist")
    raw = {**EXACT, "log_dir": str(tmp / "runs"), "run_name": "exact"}
    ranks = run_processes(_scenarios, 2, tmp / "out", raw)
    for r in ranks:
        assert "error" not in r, r.get("traceback")
    return ranks, _train_one_epoch({**raw, "run_name": "single"})  # its own folder: the ranks saved theirs


def test_two_processes_end_with_the_parameters_of_one_process(two_processes):
    """Global batch 16 on 2 processes = batch 16 on one, joint over 3 bit-widths (frozen-BN model: see
    _dist_helpers.FrozenBNResNet; per-process BN batch statistics would differ)."""
    ranks, single = two_processes
    for r in ranks:
        assert r["exact"]["state"].keys() == single["state"].keys()
        for key, value in single["state"].items():
            torch.testing.assert_close(r["exact"]["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_one_gradient_all_reduce_per_optimizer_step(two_processes):
    for r in (r["exact"] for r in two_processes[0]):
        assert r["steps"] == 4
        assert r["collectives"] == r["steps"] + 1  # + the metric sums at the end of the epoch
        assert r["ddp_syncs"] == 0  # DDP's reducer never ran


def test_validation_counts_101_samples_once_over_2_processes(two_processes):
    ranks, single = two_processes
    for r in (r["exact"] for r in ranks):
        for bits, sums in r["val"].items():
            assert sums[0] == 101
            assert sums[2] == single["val"][bits][2]  # correct@1, as one process counts it
            assert sums[1] == pytest.approx(single["val"][bits][1], rel=1e-4)


def test_adabits_test_on_2_processes_evaluates_every_sample_once(two_processes):
    """`adabits test` under torchrun: each process its shard, the sums reduced: what training's evaluation says."""
    ranks, single = two_processes
    for r in (r["exact"] for r in ranks):
        for bits, metrics in r["tested"].items():
            assert metrics["top1_error"] == pytest.approx(r["val_summary"][bits]["top1_error"])
            assert metrics["top1_error"] == pytest.approx(single["val_summary"][bits]["top1_error"], abs=1e-6)


def test_mismatched_configs_between_ranks_are_named(two_processes):
    for r in two_processes[0]:
        assert "different configs" in r["mismatch"].get("error", ""), r["mismatch"]
        assert "lr: 0.05 vs 0.06" in r["mismatch"]["error"]


# ---------------------------------------------------------------- errors found before any process talks


def _fake_world(monkeypatch, world: int) -> None:
    for key, value in torchrun_env(0, world, free_port()).items():
        monkeypatch.setenv(key, value)


def test_distributed_true_without_torchrun_says_how_to_launch(tmp_path, monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        Trainer(tiny_config(tmp_path, distributed=True))
    assert cli.main(["train", *tiny_args(tmp_path, distributed=True)]) == cli.EXIT_USAGE
    assert "not started by torchrun" in capsys.readouterr().err


def test_batch_size_not_divisible_by_world_size(tmp_path, monkeypatch):
    _fake_world(monkeypatch, 2)
    with pytest.raises(ConfigError, match="batch_size 15 is not divisible by the world size 2"):
        Trainer(tiny_config(tmp_path, batch_size=15), echo=quiet).prepare()
    assert not dist.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_nccl_without_cuda_is_a_config_error(tmp_path, monkeypatch):
    _fake_world(monkeypatch, 2)
    with pytest.raises(ConfigError, match="dist_backend nccl needs CUDA devices"):
        Trainer(tiny_config(tmp_path, dist_backend="nccl"), echo=quiet).prepare()


def test_sync_bn_on_cpu_is_a_config_error(tmp_path, monkeypatch):
    _fake_world(monkeypatch, 1)
    trainer = Trainer(tiny_config(tmp_path, sync_bn=True, device="cpu"), echo=quiet)
    try:
        with pytest.raises(ConfigError, match="sync_bn: true needs CUDA"):
            trainer.prepare()
    finally:
        trainer.close()
    assert not dist.is_initialized()


def test_one_process_group_trains_and_saves_unwrapped_weights(tmp_path, monkeypatch):
    """torchrun with one process: DDP wraps the model, the checkpoint holds no `module.` prefixes."""
    _fake_world(monkeypatch, 1)
    trainer = Trainer(tiny_config(tmp_path, num_epochs=1), echo=quiet)
    try:
        trainer.prepare().fit()
    finally:
        trainer.close()
    saved = torch.load(tmp_path / "tiny" / "latest_checkpoint.pt", weights_only=True)["model"]
    assert saved and not any(k.startswith("module.") for k in saved)
    resumed = Trainer(tiny_config(tmp_path, num_epochs=2), echo=quiet).prepare()  # any world size resumes
    assert resumed.start_epoch == 1


# ---------------------------------------------------------------- the sharded in-memory loader


def _loader(n: int, batch: int, rank: int, world: int, shuffle: bool, **kw: Any) -> TensorLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return TensorLoader(images, torch.arange(n), batch, ToModelInput(False, (0.0,), (1.0,)), shuffle=shuffle,
                        seed=3, rank=rank, world_size=world, **kw)


def test_train_shards_split_every_global_batch_of_one_process():
    one = [labels for _, labels in _loader(50, 8, 0, 1, True)]
    parts = [[labels for _, labels in _loader(50, 8, r, 2, True)] for r in range(2)]
    assert len(one) == len(parts[0]) == len(parts[1]) == 7  # 6 full batches and 2 samples left
    for step, labels in enumerate(one):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), labels)
    shares = [_loader(50, 8, r, 2, True).share(6) for r in range(2)]
    assert shares == [0.5, 0.5] and _loader(50, 8, 0, 2, True).share(0) == 0.5


def test_augmented_shards_match_one_process_and_differ_with_use_diff_seed():
    kw = {"crop_padding": 1, "random_flip": True}
    one = [x for x, _ in _loader(32, 8, 0, 1, True, **kw)]
    parts = [[x for x, _ in _loader(32, 8, r, 2, True, **kw)] for r in range(2)]
    assert all(torch.equal(torch.cat([a, b]), x) for a, b, x in zip(*parts, one))
    own = [[x for x, _ in _loader(32, 8, r, 2, True, aug_seed=3 + r, **kw)] for r in range(2)]
    assert not all(torch.equal(a, b) for a, b in zip(own[0], parts[0]))


def test_a_last_train_batch_smaller_than_the_world_is_dropped_everywhere():
    assert [len(_loader(33, 8, r, 4, True)) for r in range(4)] == [4] * 4  # 1 sample left for 4 processes


def test_validation_shards_count_every_sample_once_without_padding():
    for n, world in ((101, 2), (101, 3), (5, 4), (3, 4)):
        seen = torch.cat([labels for r in range(world) for _, labels in _loader(n, 16, r, world, False)])
        assert sorted(seen.tolist()) == list(range(n))


def test_train_batch_must_divide_by_world_size():
    with pytest.raises(ValueError, match="batch_size 10 is not divisible by the world size 4"):
        _loader(40, 10, 0, 4, True)


# ---------------------------------------------------------------- torchrun --max-restarts


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_killed_worker_is_restarted_and_the_run_resumes(tmp_path):
    """torchrun --max-restarts=1: kill rank 1 once the first checkpoint exists; the run still completes."""
    run_dir = tmp_path / "tiny"
    args = tiny_args(tmp_path, num_epochs=4, synthetic_train_size=384, bits_list=[8, 6, 4])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", "--monitor-interval=0.2", str(REPO / "train.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = kill_second_worker_when(proc, lambda: (run_dir / "latest_checkpoint.pt").is_file())
    out, _ = proc.communicate(timeout=300)
    assert killed is not None, out
    assert proc.returncode == 0, out
    assert "resuming from" in out, out
    ckpt = torch.load(run_dir / "latest_checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4
    assert ckpt["scheduler"]["last_epoch"] == 4 * 384 // 16  # every step of every epoch, once
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["bits"]) for r in rows] == [(e, b) for e in (1, 2, 3, 4) for b in (8, 6, 4)]


def test_samplers_for_dataloader_datasets():
    """EvalShardSampler: every index once over the ranks; train_sampler: disjoint shards, new order each epoch."""
    from adabits.data.sharding import EvalShardSampler, train_sampler

    data = list(range(101))
    shards = [list(EvalShardSampler(data, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == data and [len(s) for s in shards] == [50, 51]
    samplers = [train_sampler(data, r, 2, seed=5, drop_last=True) for r in range(2)]
    first = [list(s) for s in samplers]
    assert not set(first[0]) & set(first[1])
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != first[0]
