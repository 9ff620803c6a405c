"""Cost of quantization in a training step: ResNet-20 at 4 bits (and a joint {8,6,5,4} step) vs the float network.

One process, the variants interleaved round by round so that machine noise hits them alike;
the reported numbers are ratios of medians to the eager float32 step of the float network, and the
minor page faults of each step (getrusage's ru_minflt around it: a page the allocator gave back to the
kernel and faulted in again). Variants: the quantizers eager or compiled alone (`compile_quantizers`),
the whole model compiled (--compile), and the same under bf16 autocast (--bf16; the float network in bf16
too). `--memory keep` (the default) calls `adabits.keep_freed_memory()` first, as the command line does;
`--memory leave` keeps glibc's defaults. `--memory-variants` runs the float and 4-bit steps once per
allocator setting, each in a process of its own: glibc's defaults, `keep_freed_memory()`, the same
settings as MALLOC_* environment variables, jemalloc and tcmalloc (LD_PRELOAD, where installed).
`--ablations` adds the 4-bit step with other forms of the quantizers (benchmarks/training/quant_variants.py):
those before issue 32, and a PACT that saves a bool mask.
The machine's load average is recorded before and after: on a shared machine, rerun when it is above
about 1.5 (the ratios hold up to noise; absolute times do not). Run:

    python -m benchmarks.training.quant_overhead [--rounds 7] [--batch 128] [--channels-last] [--compile] [--bf16]
        [--memory keep|leave] [--memory-variants] [--ablations] [--out FILE.json]   (FILE.md beside it: the tables)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import adabits
from adabits.engine import precision
from adabits.memory import ENVIRONMENT, MemorySettings, keep_freed_memory, loaded_allocator

from ..common import exit_on_bad_input, full_command, report
from . import quant_variants

#: CPU flags of bf16 arithmetic (what the bf16 goal needs), besides common's int8 ones (common.INT8_FLAGS)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16")
#: shared libraries tried for --memory-variants (Debian/Ubuntu names)
PRELOADS = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"), "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")}
JEMALLOC_KEEP = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def make_step(bits_list: list[int], compiled: bool, batch: int, device: str, channels_last: bool,
              compiled_quantizers: bool = False, dtype: str = "fp32") -> Callable[[], None]:
    """A closure running one joint step (forward + backward per bit-width, one SGD update) of a fresh ResNet-20."""
    torch.manual_seed(0)
    model = adabits.create_model("resnet20", bits_list=bits_list, num_classes=10, in_chans=1).to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    if compiled_quantizers:
        adabits.compile_quantizers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model) if compiled else model
    images = torch.randint(0, 256, (batch, 1, 28, 28), device=device).float().contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)
    where = torch.device(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for bits in bits_list:
            adabits.set_bits(model, bits)
            with precision.autocast(dtype, where):
                logits = forward(images).float()
            torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


JOINT = [8, 6, 5, 4]


def with_quantizers(step: Callable[[], None], form: str) -> Callable[[], None]:
    """`step` with the layers calling the quantizers of `form` (benchmarks/training/quant_variants.py)."""
    def run() -> None:
        with quant_variants.quantizers(form):
            step()

    return run


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_and_faults(variants: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, list[float]],
                                                                                    dict[str, list[int]]]:
    """Seconds and minor page faults of each call, the variants interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            before, start = minor_faults(), time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            faults[name].append(minor_faults() - before)
    return times, faults


def cpu_flags() -> list[str]:
    """The bf16 flags of this CPU (from /proc/cpuinfo, as lscpu shows them); [] where it can't be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return [flag for flag in BF16_FLAGS if flag in flags]


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def memory_state(settings: MemorySettings | None) -> dict[str, Any]:
    """The allocator this process runs with: what keep_freed_memory did and any MALLOC_* variables."""
    return {"allocator": loaded_allocator(), "keep_freed_memory": str(settings) if settings else None,
            "malloc_environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "ld_preload": os.environ.get("LD_PRELOAD")}


def find_library(names: tuple[str, ...]) -> str | None:
    for directory in LIBRARY_DIRS:
        for name in names:
            path = Path(directory, name)
            if path.exists():
                return str(path)
    return None


def run_memory_variants(args: argparse.Namespace) -> dict[str, Any]:
    """The float and 4-bit steps under each allocator setting, each in a fresh process (the settings that
    act at process start can only be compared so)."""
    base = [sys.executable, "-m", "benchmarks.training.quant_overhead", "--no-joint", "--no-compiled-quantizers",
            "--rounds", str(args.rounds), "--batch", str(args.batch), "--device", args.device]
    if args.threads:
        base += ["--threads", str(args.threads)]
    if args.channels_last:
        base.append("--channels-last")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "ADABITS_KEEP_FREED_MEMORY")}
    setups: dict[str, tuple[list[str], dict[str, str]]] = {
        "glibc defaults": (["--memory", "leave"], clean),
        "keep_freed_memory()": (["--memory", "keep"], clean),
        "keep_freed_memory(arena_max=1)": (["--memory", "keep", "--arena-max", "1"], clean),
        "MALLOC_* environment": (["--memory", "leave"], {**clean, **ENVIRONMENT}),
    }
    for name, names in PRELOADS.items():
        library = find_library(names)
        if library:
            setups[name] = (["--memory", "leave"], {**clean, "LD_PRELOAD": library})
            if name == "jemalloc":  # its default returns freed pages after 10 s; never, here
                setups["jemalloc, no decay"] = (["--memory", "leave"], {**clean, "LD_PRELOAD": library,
                                                                        "MALLOC_CONF": JEMALLOC_KEEP})
    results = {}
    for name, (options, env) in setups.items():
        done = subprocess.run(base + options, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip().splitlines()[-1:]}
            continue
        run = json.loads(done.stdout)
        results[name] = {"ratio_4bit": run["ratio_to_fp32_eager"]["4bit_eager"],
                         "faults_per_step": run["minor_faults_per_step"],
                         "fault_ratio_4bit": run["fault_ratio_to_fp32_eager"]["4bit_eager"],
                         "median_step_s": run["median_step_s"], "load_average": run["load_average"],
                         "memory": run["memory"]}
        print(f"{name}: {results[name]['ratio_4bit']}x, faults {results[name]['faults_per_step']}", file=sys.stderr)
    return results


def markdown(result: dict[str, Any]) -> str:
    """The result as the tables docs/training.md quotes."""
    machine = result["machine"]
    lines = [f"# {__doc__.splitlines()[0]}", "", f"    {result['command']}", "",
             f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {result['torch_threads']} threads; "
             f"int8 flags: {', '.join(machine['int8_instructions'] or []) or 'none'}; bf16 flags: "
             f"{', '.join(result['bf16_instructions']) or 'none'}; load average before / after: "
             f"{result['load_average']['before']} / {result['load_average']['after']}; "
             f"{result['memory']['keep_freed_memory'] or 'allocator ' + result['memory']['allocator']}.", ""]
    if result.get("median_step_s"):
        lines += ["| step | median s | ratio to fp32 eager | minor faults / step |", "|---|---|---|---|"]
        for name, seconds in result["median_step_s"].items():
            lines.append(f"| {name} | {seconds} | {result['ratio_to_fp32_eager'][name]} | "
                         f"{result['minor_faults_per_step'][name]} |")
        lines.append("")
    if result.get("bf16_ratio_to_fp32_same_step"):
        lines += ["bf16 against fp32 of the same step: " + ", ".join(
            f"{k} {v}x" for k, v in result["bf16_ratio_to_fp32_same_step"].items()), ""]
    if result.get("memory_variants"):
        lines += ["| allocator (own process) | 4-bit / fp32 step | faults / step fp32, 4-bit | load average |",
                  "|---|---|---|---|"]
        for name, row in result["memory_variants"].items():
            if "error" in row:
                lines.append(f"| {name} | failed: {row['error']} | | |")
                continue
            faults = row["faults_per_step"]
            lines.append(f"| {name} | {row['ratio_4bit']} | {faults['fp32_eager']}, {faults['4bit_eager']} | "
                         f"{row['load_average']['before']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training.quant_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd 4-bit step")
    parser.add_argument("--bf16", action="store_true", help="also time the float and 4-bit steps under bf16 autocast")
    parser.add_argument("--no-joint", action="store_true", help="leave out the joint {8,6,5,4} steps")
    parser.add_argument("--no-compiled-quantizers", action="store_true", help="leave out the compiled-quantizer steps")
    parser.add_argument("--channels-last", action="store_true", help="NHWC layout (faster convolutions on CPU)")
    parser.add_argument("--memory", choices=("keep", "leave"), default="keep",
                        help="keep: adabits.keep_freed_memory() first (default); leave: the allocator's defaults")
    parser.add_argument("--arena-max", type=int, help="with --memory keep: also cap glibc's arenas (M_ARENA_MAX)")
    parser.add_argument("--ablations", action="store_true",
                        help="also time the 4-bit step with the quantizers before issue 32 and with a bool-mask PACT")
    parser.add_argument("--memory-variants", action="store_true",
                        help="also run the float and 4-bit steps under each allocator setting, a process each")
    parser.add_argument("--threads", type=int, help="torch's threads (default: torch's own choice, the cores)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here, and as tables beside it (.md)")
    args = parser.parse_args()
    settings = keep_freed_memory(arena_max=args.arena_max) if args.memory == "keep" else None
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()

    def step(bits: list[int], **options: object) -> Callable[[], None]:
        return make_step(bits, options.pop("compiled", False), args.batch, args.device, args.channels_last,  # type: ignore[arg-type]
                         **options)  # type: ignore[arg-type]

    variants = {"fp32_eager": step([32]), "4bit_eager": step([4])}
    if args.ablations:
        for form in quant_variants.FORMS:
            variants[f"4bit_eager_{form}_quantizers"] = with_quantizers(step([4]), form)
    if not args.no_compiled_quantizers:
        variants["4bit_compiled_quantizers"] = step([4], compiled_quantizers=True)
    if not args.no_joint:
        variants["joint8654_eager"] = step(JOINT)
        if not args.no_compiled_quantizers:
            variants["joint8654_compiled_quantizers"] = step(JOINT, compiled_quantizers=True)
    if args.compile:
        variants["4bit_compiled"] = step([4], compiled=True)
    if args.bf16:
        variants["fp32_net_bf16"] = step([32], dtype="bf16")
        variants["4bit_bf16_eager"] = step([4], dtype="bf16")
        if not args.no_compiled_quantizers:
            variants["4bit_bf16_compiled_quantizers"] = step([4], dtype="bf16", compiled_quantizers=True)
    for run in variants.values():  # warm-up (and compilation)
        for _ in range(3):
            run()
    times, faults = time_and_faults(variants, args.rounds)

    median = {name: statistics.median(t) for name, t in times.items()}
    median_faults = {name: int(statistics.median(f)) for name, f in faults.items()}
    base = median["fp32_eager"]
    result: dict[str, Any] = {
        "command": full_command("training.quant_overhead", args),
        "device": args.device,
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "bf16_instructions": cpu_flags(),
        "memory": memory_state(settings),
        "load_average": {"before": load_before, "after": load_average()},
        "median_step_s": {k: round(v, 4) for k, v in median.items()},
        "ratio_to_fp32_eager": {k: round(v / base, 3) for k, v in median.items()},
        "minor_faults_per_step": median_faults,
        "fault_ratio_to_fp32_eager": {k: round(v / max(median_faults["fp32_eager"], 1), 2)
                                      for k, v in median_faults.items()},
    }
    if args.bf16:
        same = {"float_net": ("fp32_net_bf16", "fp32_eager"), "4bit_eager": ("4bit_bf16_eager", "4bit_eager"),
                "4bit_compiled_quantizers": ("4bit_bf16_compiled_quantizers", "4bit_compiled_quantizers")}
        result["bf16_ratio_to_fp32_same_step"] = {
            name: round(median[bf16] / median[fp32], 3) for name, (bf16, fp32) in same.items() if bf16 in median}
    if args.memory_variants:
        result["memory_variants"] = run_memory_variants(args)
        result["load_average"]["after_variants"] = load_average()
    full = report(result, args.out)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(markdown(full))


if __name__ == "__main__":
    with exit_on_bad_input("training.quant_overhead"):
        main()
