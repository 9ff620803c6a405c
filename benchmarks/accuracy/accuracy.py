"""Accuracy of one AdaBits model vs individually trained ones, ablations, direct adaptation, peers.

Every row uses the main job's recipe (README): stage 1 trains the float SAT ResNet-20 on
Fashion-MNIST (apps/fashion_mnist/resnet20_fp.yml, 3 epochs) once per seed; stage 2 starts each
row from that float model and fine-tunes it with apps/fashion_mnist/q_resnet20_adabits.yml
(200 steps of batch 128, cosine, `centered` weights, clipping levels chosen from data) at
lr TABLE_LR, changing only the keys the row names. A joint row's step trains all of its bit-widths; the
full-precision row gets the same 200 steps at 32 bits. Top-1 is on the 10,000 test images.

    python -m benchmarks.accuracy.accuracy                   # the whole table: 2 seeds, about 100 minutes on 2 cores
    python -m benchmarks.accuracy.accuracy --quick           # checks the script in minutes: 1 seed, tiny schedules,
                                                    # first 2,000 test images (its numbers mean nothing)

Each finished job leaves a JSON file in --work-dir, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import adabits
from adabits.analysis.evaluation import top1_per_bits
from adabits.data import build_loaders, fashion_mnist
from adabits.data.idx import read_idx, write_idx
from adabits.engine import load_config
from adabits.engine.build import build_model
from adabits.engine.trainer import Trainer
from adabits.errors import TrainingDiverged

from ..common import BadInput, JobsFailed, command, exit_on_bad_input, report, run_jobs
from ..training import peers
from .accuracy_report import write_report

STAGE1 = "apps/fashion_mnist/resnet20_fp.yml"
STAGE2 = "apps/fashion_mnist/q_resnet20_adabits.yml"
HIGH = [8, 6, 5, 4]
QUICK_TRAIN, QUICK_TEST = 10_240, 2_000
# the table's stage-2 lr for every row (the main job's until these results moved it to 0.005; see the
# *_quarter_lr rows): fixed here so that reruns reproduce the table
TABLE_LR = 0.02

SEVEN = "[8,7,6,5,4,3,2]"
# the joint step's options (docs/training.md), each at the table's lr: `mean` averages the per-bit
# losses, so one lr serves every bits_list and the individual rows
RECIPE_ROWS: dict[str, list[str]] = {
    **{f"adabits_{name}_mean": [f"bits_list={bits}", "joint_loss=mean"]
       for name, bits in (("8654", "[8,6,5,4]"), ("432", "[4,3,2]"), ("7bits", SEVEN))},
    **{f"adabits_432_mean_distill_{mode}": ["bits_list=[4,3,2]", "joint_loss=mean", f"distill={mode}"]
       for mode in ("highest", "recursive", "float")},
    "adabits_8654_mean_distill_float": ["bits_list=[8,6,5,4]", "joint_loss=mean", "distill=float"],
    # half labels, half teacher: at w = 1 the taught bit-widths never see a label
    "adabits_432_mean_distill_float_half": ["bits_list=[4,3,2]", "joint_loss=mean", "distill=float",
                                            "distill_weight=0.5"],
    "adabits_7bits_mean_sandwich1": [f"bits_list={SEVEN}", "joint_loss=mean", "sandwich_middle=1"],
}

# row id -> stage-2 overrides (besides seed, paths and threads)
TRAINED_ROWS: dict[str, list[str]] = {
    "fp": ["bits_list=[32]"],
    **{f"individual_{b}": [f"bits_list=[{b}]"] for b in (8, 6, 5, 4, 3, 2)},
    "adabits_8654": ["bits_list=[8,6,5,4]"],
    "adabits_432": ["bits_list=[4,3,2]"],
    "adabits_432_no_switchbn": ["bits_list=[4,3,2]", "switchbn=false"],
    "adabits_432_one_alpha": ["bits_list=[4,3,2]", "switch_alpha=false"],
    "adabits_432_no_sat_rescale": ["bits_list=[4,3,2]", "rescale=false", "rescale_conv=false"],
    "adabits_432_fixed_alpha": ["bits_list=[4,3,2]", "alpha_init=fixed"],
    # the clipping levels chosen from data see the float model's BN statistics, which belong to the
    # rescaled weights; the seed's fixed levels do not depend on them
    "adabits_432_no_sat_rescale_fixed_alpha": ["bits_list=[4,3,2]", "rescale=false", "rescale_conv=false",
                                               "alpha_init=fixed"],
    "adabits_432_modified": ["bits_list=[4,3,2]", "weight_quant_scheme=modified"],
    # a joint step adds the gradients of its 4 bit-widths: the same steps at a quarter of the lr,
    # against individual models at that lr too
    "adabits_8654_quarter_lr": ["bits_list=[8,6,5,4]", "lr=0.005"],
    **{f"individual_{b}_quarter_lr": [f"bits_list=[{b}]", "lr=0.005"] for b in (8, 6, 5, 4)},
    "adabits_432_third_lr": ["bits_list=[4,3,2]", "lr=0.0067"],
    **{f"individual_{b}_third_lr": [f"bits_list=[{b}]", "lr=0.0067"] for b in (4, 3, 2)},
    **RECIPE_ROWS,
}
PEER_ROWS = {"brevitas_w4a4": "individual_4", "torch_ao_qat8": "individual_8"}  # peer -> our row's config
ADAPT_BITS = [8, 6, 5, 4, 3, 2]
CALIBRATED_BITS = [7, 3]
CALIB_BATCHES = 50
MAIN_ROWS = ["adabits_8654", "adabits_432", *(f"individual_{b}" for b in (8, 6, 5, 4, 3, 2)), "fp"]


@dataclass
class Job:
    """One unit of work; `after` names the jobs (of the same seed) whose files it reads."""
    id: str
    seed: int
    kind: str  # "stage1" | "train" | "adapt" | "calibrate" | "peer"
    args: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    priority: tuple[int, int] = (0, 0)  # started in this order when ready: a stopped run keeps whole seeds

    @property
    def key(self) -> str:
        return f"seed{self.seed}/{self.id}"

    @property
    def needs(self) -> list[str]:
        return [f"seed{self.seed}/{after}" for after in self.after]


def quick_subset(target: Path) -> Path:
    """The first QUICK_TRAIN training and QUICK_TEST test images of Fashion-MNIST, as IDX files."""
    files = fashion_mnist.locate(None)
    if files is None:
        raise BadInput(fashion_mnist.missing_message(None))
    target.mkdir(parents=True, exist_ok=True)
    for key, stem in fashion_mnist.FILES.items():
        count = QUICK_TRAIN if key.startswith("train") else QUICK_TEST
        write_idx(target / stem, read_idx(files[key])[:count])
    return target


def plan(seeds: list[int], work_dir: Path, threads: int, quick: bool, with_peers: bool,
         extra: list[str] | None = None) -> list[Job]:
    """Every job of the table. Per seed: the float model first, then the main rows, the evaluations
    of trained models, the peers and the ablations; seed by seed, except that every float model
    starts first. `extra` overrides go to every job."""
    jobs: list[Job] = []
    short1, short2 = [], []
    if quick:
        data = f"dataset_dir={quick_subset(work_dir / 'data')}"
        short1, short2 = [data, "num_epochs=1", "max_iters_per_epoch=60"], [data, "max_iters_per_epoch=20"]
    ablations = [r for r in TRAINED_ROWS if r not in MAIN_ROWS]
    for n, seed in enumerate(seeds):
        seed_dir = work_dir / f"seed{seed}"
        common = [f"random_seed={seed}", f"log_dir={seed_dir}", f"num_threads={threads}", *(extra or [])]
        jobs.append(Job("stage1", seed, "stage1", [f"app:{STAGE1}", *common, "run_name=stage1", *short1],
                        priority=(0, n)))
        stage2 = [f"app:{STAGE2}", *common, f"fp_pretrained_file={seed_dir / 'stage1' / 'best_model.pt'}",
                  f"lr={TABLE_LR}", *short2]
        order = iter(range(1, 100))
        for row in MAIN_ROWS:
            jobs.append(Job(row, seed, "train", [*stage2, *TRAINED_ROWS[row], f"run_name={row}"], ["stage1"],
                            (n + 1, next(order))))
        jobs.append(Job("direct_adaptation", seed, "adapt", [*stage2, *TRAINED_ROWS["individual_8"]],
                        ["individual_8"], (n + 1, next(order))))
        jobs.append(Job("calibrated", seed, "calibrate", [*stage2, *TRAINED_ROWS["adabits_8654"]],
                        ["adabits_8654"], (n + 1, next(order))))
        if with_peers:
            for peer, ours in PEER_ROWS.items():
                jobs.append(Job(peer, seed, "peer", [*stage2, *TRAINED_ROWS[ours], f"run_name={peer}"],
                                ["stage1"], (n + 1, next(order))))
        for row in ablations:
            jobs.append(Job(row, seed, "train", [*stage2, *TRAINED_ROWS[row], f"run_name={row}"], ["stage1"],
                            (n + 1, next(order))))
    return jobs


def select(jobs: list[Job], rows: list[str]) -> list[Job]:
    """The jobs of `rows` and every job they need (their seed's float model, the trained rows they read)."""
    known = list(dict.fromkeys(j.id for j in jobs))
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise BadInput(f"unknown rows {unknown}; allowed: {', '.join(known)}")
    wanted = {(j.seed, j.id) for j in jobs if j.id in rows}
    while True:
        needed = wanted | {(j.seed, dep) for j in jobs if (j.seed, j.id) in wanted for dep in j.after}
        if needed == wanted:
            return [j for j in jobs if (j.seed, j.id) in wanted]
        wanted = needed


# ------------------------------------------------------------------ the jobs (run in worker processes)
def _train(job: Job) -> dict[str, Any]:
    cfg = load_config(job.args).config
    t0 = time.time()
    try:
        best = Trainer(cfg, echo=print).prepare().fit()
    except TrainingDiverged as exc:
        return {"diverged": str(exc)}  # an outcome of the row (e.g. an ablation), not a failure of the script
    top = {str(b): round(100 * (1 - v["top1_error"]), 2) for b, v in best["val"].items()}
    return {"top1": top, "train_seconds": round(time.time() - t0, 1)}


def _trained_model(args: list[str], checkpoint: Path, bits_list: list[int]) -> tuple[Any, torch.nn.Module, dict]:
    """Loaders, a model with `bits_list`, and the state dict of a trained run's checkpoint."""
    cfg = load_config([*args, f"bits_list={bits_list}".replace(" ", "")]).config
    torch.manual_seed(cfg.random_seed)
    loaders = build_loaders(cfg, torch.device("cpu"))
    model = build_model(cfg, loaders.num_classes, loaders.in_chans).to(memory_format=torch.channels_last)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    return loaders, model, state


def _adapt(job: Job, work_dir: Path) -> dict[str, Any]:
    """The paper's motivation: a model trained at 8 bits alone, run at lower bit-widths.

    Its BN and clipping levels are copied to every bit-width (`load_fp_state_dict`); then each
    lower bit-width's BN statistics are re-estimated on CALIB_BATCHES training batches.
    """
    ckpt = work_dir / f"seed{job.seed}" / "individual_8" / "best_model.pt"
    loaders, model, state = _trained_model(job.args, ckpt, ADAPT_BITS)
    adabits.load_fp_state_dict(model, state)
    plain = top1_per_bits(model, loaders.val, ADAPT_BITS)
    for b in ADAPT_BITS[1:]:
        adabits.recalibrate_bn(model, b, loaders.train, CALIB_BATCHES)
    recal = top1_per_bits(model, loaders.val, ADAPT_BITS)
    return {"top1": _by_bits(plain), "top1_bn_recalibrated": _by_bits(recal)}


def _calibrate(job: Job, work_dir: Path) -> dict[str, Any]:
    """Bit-widths the joint {8,6,5,4} model never trained at, after `calibrate_bn`."""
    ckpt = work_dir / f"seed{job.seed}" / "adabits_8654" / "best_model.pt"
    loaders, model, state = _trained_model(job.args, ckpt, HIGH)
    model.load_state_dict(state)
    for b in CALIBRATED_BITS:
        adabits.calibrate_bn(model, b, loaders.train, CALIB_BATCHES)
    return {"top1": _by_bits(top1_per_bits(model, loaders.val, CALIBRATED_BITS))}


def _by_bits(values: dict) -> dict[str, float]:
    return {str(bits): value for bits, value in values.items()}


def _peer(job: Job) -> dict[str, Any]:
    return peers.peer_row(job.id, load_config(job.args).config)


def run_job(job: Job, work_dir: Path) -> dict[str, Any]:
    """One job, its output in WORK_DIR/KEY.log; `common.run_jobs` keeps the result as WORK_DIR/KEY.json."""
    log_path = work_dir / f"{job.key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        t0 = time.time()
        if job.kind in ("stage1", "train"):
            result = _train(job)
        elif job.kind == "adapt":
            result = _adapt(job, work_dir)
        elif job.kind == "calibrate":
            result = _calibrate(job, work_dir)
        else:
            result = _peer(job)
    result["seconds"] = round(time.time() - t0, 1)
    return result


# ------------------------------------------------------------------ the table
def collect(jobs: list[Job], done: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per row: every seed's results, and per bit-width the mean and half the range over seeds."""
    rows: dict[str, Any] = {}
    for row in dict.fromkeys(j.id for j in jobs):
        per_seed = {str(s): done[f"seed{s}/{row}"] for s in seeds}
        entry: dict[str, Any] = {"seeds": per_seed}
        diverged = [s for s, r in per_seed.items() if "diverged" in r]
        if diverged:
            entry["diverged_seeds"] = diverged
        for metric in ("top1", "top1_bn_recalibrated", "top1_int8"):
            values = [r[metric] for r in per_seed.values() if metric in r]
            if not values:
                continue
            if isinstance(values[0], dict):
                entry[metric] = {b: _stats([v[b] for v in values]) for b in values[0]}
            else:
                entry[metric] = _stats(values)
        rows[row] = entry
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(sum(values) / len(values), 2), "half_range": round((max(values) - min(values)) / 2, 2),
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 float steps, 20 quantized steps")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 1995 1996 (--quick: 1995)")
    parser.add_argument("--rows", nargs="+", help="run only these rows (and what they need); default: all")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time")
    parser.add_argument("--threads", type=int, help="torch threads per job (default: cores / workers); "
                        "the thread count changes float rounding, so the results match to the digit only with the same")
    parser.add_argument("--no-peers", action="store_true", help="leave out the Brevitas and torch.ao rows")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every job, e.g. device=cuda")
    parser.add_argument("--work-dir", type=Path, help="runs and per-job results (default: runs/accuracy[_quick])")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/accuracy/accuracy[_quick].json, "
                        "with --rows: WORK_DIR/results.json)")
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    seeds = args.seeds or ([1995] if args.quick else [1995, 1996])
    work_dir = (args.work_dir or Path(f"runs/accuracy{suffix}")).resolve()
    out = args.out or (work_dir / "results.json" if args.rows else Path(f"benchmarks/results/accuracy/accuracy{suffix}.json"))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    jobs = plan(seeds, work_dir, threads, args.quick, with_peers=not args.no_peers, extra=args.set)
    if args.rows:
        jobs = select(jobs, args.rows)
    t0 = time.time()
    try:
        done = run_jobs(jobs, functools.partial(run_job, work_dir=work_dir), work_dir, args.workers)
    except JobsFailed as exc:
        raise SystemExit(f"{exc} (logs: {work_dir}/seed*/ROW.log)") from None
    results = {
        "command": command("accuracy.accuracy"),
        "date": datetime.date.today().isoformat(),
        "recipe": {"stage1": STAGE1, "stage2": STAGE2, "quick": args.quick, "quick_test_images": QUICK_TEST,
                   "seeds": seeds, "overrides": args.set, "calibration_batches": CALIB_BATCHES,
                   "workers": args.workers, "threads_per_job": threads},
        "wall_seconds_this_invocation": round(time.time() - t0, 1),
        "rows": collect(jobs, done, seeds),
    }
    write_report(report(results, out, echo=False), out.with_suffix(""))
    print(f"wrote {out}")


if __name__ == "__main__":
    with exit_on_bad_input("accuracy.accuracy"):
        main()
