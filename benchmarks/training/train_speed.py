"""Training throughput of the main job's ResNet-20: full precision, one bit-width, joint over four, and the
Brevitas 4-bit peer, eager and torch.compile'd, timed side by side in one process.

    python -m benchmarks.training.train_speed [--rounds 10] [--batch 128] [--no-compile] [--threads N] [--out FILE]

Our variants are training steps of adabits.engine.Trainer itself (`Trainer.train_step`): "fp" is stage 1
of the main job (apps/fashion_mnist/resnet20_fp.yml, bits [32]), "4bit" its stage-2 config trained at
bits_list [4] alone, "joint" the stage-2 config (apps/fashion_mnist/q_resnet20_adabits.yml): one step
is forward + backward at each of 8, 6, 5 and 4 bits, then one optimizer step. "brevitas4" is the peer of
benchmarks/training/peers.py (4-bit weights and conv inputs) with the same optimizer. All on one real training
batch (1x28x28, channels_last). The variants run interleaved round by round; the report gives medians,
images/s and ratios; the first call of each variant (which compiles the compiled ones) is timed apart
and excluded, as are `--warmup` more steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from adabits.data import build_loaders
from adabits.engine import load_config
from adabits.engine.build import build_model
from adabits.engine.optim import build_optimizer, build_scheduler
from adabits.engine.trainer import Trainer

from ..common import exit_on_bad_input, full_command, report, time_interleaved
from . import peers

FP_CONFIG = "apps/fashion_mnist/resnet20_fp.yml"
ADABITS_CONFIG = "apps/fashion_mnist/q_resnet20_adabits.yml"
#: variant -> (config file, overrides) of our Trainer
OURS = {"fp": (FP_CONFIG, []), "4bit": (ADABITS_CONFIG, ["bits_list=[4]"]), "joint": (ADABITS_CONFIG, [])}
NO_FILES = ["fp_pretrained_file=", "alpha_init=fixed", "progress=false", "log_dir=/nonexistent-train-speed"]


def trainer_step(name: str, compiled: bool, batch: int) -> tuple[Callable[[], None], int]:
    """One `Trainer.train_step` of variant `name` on a fixed training batch; also the bit-widths per step."""
    path, overrides = OURS[name]
    # a run folder per variant: each Trainer locks its own, and two variants share a config file
    run_name = f"run_name={name}_{'compiled' if compiled else 'eager'}"
    args = [f"app:{path}", f"batch_size={batch}", f"compile={str(compiled).lower()}", *NO_FILES, run_name, *overrides]
    trainer = Trainer(load_config(args).config, echo=lambda _msg: None).prepare()
    images, labels = next(iter(trainer.loaders.train))
    return (lambda: trainer.train_step(images, labels, step=0)), len(trainer.bits)


def brevitas_step(compiled: bool, batch: int) -> Callable[[], None]:
    """One step of the Brevitas 4-bit peer (freshly initialised twin) with our optimizer and schedule."""
    cfg = load_config([f"app:{ADABITS_CONFIG}", "bits_list=[4]", f"batch_size={batch}", *NO_FILES]).config
    torch.manual_seed(cfg.random_seed)
    loaders = build_loaders(cfg, torch.device("cpu"))
    ours = build_model(cfg.model_copy(update={"bits_list": [32]}), loaders.num_classes, loaders.in_chans)
    stem_bits, fc_bits = peers.edge_bits(cfg, loaders.num_classes, loaders.in_chans)
    model = peers.brevitas_model(peers.float_twin(ours), 4, stem_bits, fc_bits).to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, 1000)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    forward = torch.compile(model) if compiled else model
    images, labels = next(iter(loaders.train))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(forward(images), labels).backward()
        optimizer.step()
        scheduler.step()

    return step


def build_variants(batch: int, compile_too: bool) -> tuple[dict[str, Callable[[], None]], dict[str, int]]:
    steps: dict[str, Callable[[], None]] = {}
    bit_widths: dict[str, int] = {}
    for compiled in (False, True) if compile_too else (False,):
        suffix = "compiled" if compiled else "eager"
        for name in OURS:
            steps[f"{name}_{suffix}"], bit_widths[f"{name}_{suffix}"] = trainer_step(name, compiled, batch)
        steps[f"brevitas4_{suffix}"], bit_widths[f"brevitas4_{suffix}"] = brevitas_step(compiled, batch), 1
    return steps, bit_widths


def ratios(median: dict[str, float]) -> dict[str, float]:
    """Each variant against fp eager, and the ratios of joint training's goal (joint <= 4 x 1.15 fp)."""
    base = median["fp_eager"]
    out = {f"{name} / fp_eager": value / base for name, value in median.items()}
    for suffix in ("eager", "compiled"):
        joint, single, fp = (median.get(f"{n}_{suffix}") for n in ("joint", "4bit", "fp"))
        if joint and single and fp:
            out[f"joint_{suffix} / (4 x fp_{suffix})"] = joint / (4 * fp)
            out[f"joint_{suffix} / (4 x 4bit_{suffix})"] = joint / (4 * single)
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.train_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant after the first")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--no-compile", action="store_true", help="eager variants only")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--note", default="", help="what else ran on the machine, recorded in the JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    steps, bit_widths = build_variants(args.batch, not args.no_compile)
    first_call_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in list(steps):
        start = time.perf_counter()
        try:
            steps[name]()  # the first call compiles the compiled variants
            for _ in range(args.warmup):
                steps[name]()
        except Exception as exc:  # noqa: BLE001  (a peer that does not compile is a result, not a crash)
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            del steps[name]
            continue
        first_call_s[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: first {1 + args.warmup} steps {first_call_s[name]} s", file=sys.stderr, flush=True)
    times = time_interleaved(steps, args.rounds)

    median = {name: statistics.median(t) for name, t in times.items()}
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # an empty folder makes the first compiled steps cold
    result = {
        "command": (f"TORCHINDUCTOR_CACHE_DIR={cache} " if cache else "") + full_command("training.train_speed", args, ["note"]),
        "note": args.note,
        "input": [args.batch, 1, 28, 28],
        "bit_widths_per_step": bit_widths,
        "first_steps_s (compile + warm-up, excluded)": first_call_s,
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "images_per_s": {k: round(args.batch / v, 1) for k, v in median.items()},
        "ratios": ratios(median),
        "all_step_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "errors": errors,
    }
    report(result, args.out)


if __name__ == "__main__":
    with exit_on_bad_input("training.train_speed"):
        main()
