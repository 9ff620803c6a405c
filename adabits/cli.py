"""Command line: `adabits train | test | profile | calibrate | export app:apps/X.yml [key=value ...]`.

Bad input (config, data, checkpoints) prints one message on stderr and exits with status 2;
Ctrl-C exits with 130 after saying where the last checkpoint is. Under torchrun
(`torchrun --nproc_per_node=N train.py app:...`) rank 0 prints, and errors name their rank.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .analysis.search import COSTS
from .engine import Interrupted, Trainer, deploy, distributed, load_config
from .engine.build import resolve_device
from .engine.config import TrainConfig
from .engine.deploy import (
    BIAS_RETIRED,
    CALIBRATION_IMAGES,
    EXPORT_FORMATS,
    MIXED_RETIRED,
    ONNX_GRAPHS,
    parse_bits_option,
)
from .engine.loading import run_dir
from .engine.search_command import run_search
from .engine.session import RunSession, StopRequest
from .errors import ConfigError, UserError
from .export.nbits_linear import ACCURACY_LEVEL, ACCURACY_LEVELS
from .memory import keep_freed_memory

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """config arguments:
  app:PATH.yml      the experiment file (a bare PATH.yml works too)
  key=value         override any key; the value is YAML (bits_list=[4,3,2], lr=0.05)
  bs:256            the original's form, still accepted (bs is batch_size)
examples:
  adabits train app:apps/fashion_mnist/q_resnet20_adabits.yml num_epochs=3
  adabits test app:apps/fashion_mnist/q_resnet20_adabits.yml [pretrained_file=PATH]
  adabits profile app:apps/fashion_mnist/q_resnet20_adabits.yml [bits=4] [verbose=true]
  adabits calibrate app:apps/fashion_mnist/q_resnet20_adabits.yml bits=7 [num_batches=50] [out=PATH]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format packed [out=PATH]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format pte [bits=B] [calibration_images=512] [out=PATH]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format onnx [bits=B] [calibration_images=512] [out=PATH]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format onnx graph=qdq [bits=B]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format pte|onnx assignments=@runs/.../assignment.json
    (a per-layer assignment of `adabits search`, one more method beside every bit-width, named by the file)
    (each layer on its own grids, float bias: the model's arithmetic up to float rounding, to check a deployment)
  adabits export app:apps/fashion_mnist/resnet20_fp.yml --format onnx|pte bits=32   (the float graph)
  adabits search app:apps/fashion_mnist/q_resnet20_adabits.yml [cost=weight_bytes|bitops|latency] [budget=N] [points=9]
    (the accuracy-cost front over per-layer bit assignments; with a budget, the best one as search/assignment.json;
     cost=latency times each layer in ONNX Runtime, at accuracy_level=0|4 as export takes it)
  adabits export app:apps/fashion_mnist/q_vit_tiny_adabits.yml --format onnx|pte [graph=integer|qdq]
    (unset: all-integer where that graph covers the model, else qdq, torch.export's trace of it; the output says which)
  adabits export app:apps/fashion_mnist/q_vit_tiny_adabits.yml --format onnx|pte accuracy_level=4
    (linear layers on 4- / 8-bit kernels computing in int8: ONNX Runtime's MatMulNBits, XNNPACK's; faster, not
     exact; 0, the default: float32)
bit-widths:
  bits=B or bits=[WEIGHT_BITS,ACT_BITS] (bits_list=[[4,8],8] in a config); 32 = full precision
  bits=@FILE (profile): a per-layer assignment {"assignment": {"layer or pattern": bits}}, as adabits search writes
weights:
  test, calibrate and export use pretrained_file, else the run's best_model.pt; without either they stop.
  from_start=true uses the config's fp_pretrained_file (the untrained start of a stage-2 run) on purpose.
"""

COMMANDS = {
    "train": "train (or resume) the run a config describes",
    "test": "evaluate every bit-width of a trained model",
    "profile": "MACs, parameters, BitOPs and model size per bit-width",
    "calibrate": "add a bit-width to a trained model by re-estimating its BN statistics",
    "export": "write the trained model as one packed file or one .pte (every bit-width), or as ONNX",
    "search": "the accuracy-cost front over per-layer bit assignments of a trained model",
}


# ---------------------------------------------------------------- command keys (not config keys)
def _flag(key: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value

    return parse


def _positive_int(key: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}")
        return value

    return parse


def _out(value: Any) -> str:
    """A file to write: not empty, not a folder, in a folder that exists and is writable or can be made."""
    text = "" if value is None else str(value)
    if not text.strip():
        raise ConfigError("out= needs a file path, e.g. out=model.onnx")
    path = Path(text).expanduser()
    if path.is_dir():
        raise ConfigError(f"out={text} is a folder; name a file in it, e.g. out={path / 'model'}.<ext>")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"out={text}: cannot write into {parent}")
    return text


def _out_folder(value: Any) -> str:
    """A folder to write into: not empty, not an existing file."""
    text = "" if value is None else str(value)
    if not text.strip():
        raise ConfigError("out= needs a folder path, e.g. out=runs/search")
    if Path(text).expanduser().is_file():
        raise ConfigError(f"out={text} is a file; name a folder")
    return text


def _positive_number(key: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"{key} must be a positive number, got {value!r}")
        return float(value)

    return parse


def _choice(key: str, allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        return str(value)

    return parse


def _bits_or_assignment(value: Any) -> Any:
    """bits=B, bits=[W,A], or bits=@FILE: a per-layer assignment file (`adabits search` writes one)."""
    if isinstance(value, str) and value.startswith("@"):
        from .quant.assignment import read_assignment

        return read_assignment(value[1:])
    return parse_bits_option(value)


def _assignment_files(value: Any) -> dict[str, dict[str, Any]]:
    """assignments=@FILE[,@FILE...]: per-layer assignment files, each exported under its file's stem."""
    from .quant.assignment import read_assignment

    named: dict[str, dict[str, Any]] = {}
    for item in str(value).split(","):
        if not item.startswith("@"):
            raise ConfigError(f"assignments= takes @FILE[,@FILE...] (files `adabits search` writes); got {item!r}")
        path = Path(item[1:])
        name = re.sub(r"\W", "_", path.stem)
        name = name if name[:1].isalpha() else f"a_{name}"
        if name in named:
            raise ConfigError(f"assignments=: two files named {path.stem!r}; each is exported under its file's name")
        named[name] = read_assignment(path)
    return named


def _bias(_value: Any) -> NoReturn:
    """bias= chose a mode of the retired graph=mixed: one line saying what replaced it."""
    raise ConfigError(BIAS_RETIRED)


def _graph(value: Any) -> str:
    if value == "mixed":
        raise ConfigError(MIXED_RETIRED)
    if value not in ONNX_GRAPHS:
        raise ConfigError(f"graph must be one of {', '.join(ONNX_GRAPHS)}; got {value!r}")
    return str(value)


def _accuracy_level(value: Any) -> int:
    """accuracy_level=0|4: the linear layers' kernels in an onnx / pte export (float32, exact; int8, faster)."""
    if isinstance(value, bool) or value not in ACCURACY_LEVELS:
        raise ConfigError(f"accuracy_level must be one of {', '.join(map(str, ACCURACY_LEVELS))}; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class CommandKey:
    """A `key=value` argument of a command itself: its default and how its (YAML) value is checked."""

    default: Any
    parse: Callable[[Any], Any]
    raw: bool = False  # the text itself, not parsed as YAML (paths)


FROM_START = CommandKey(False, _flag("from_start"))
#: every command's own key=value arguments; all their validation is here
COMMAND_KEYS: dict[str, dict[str, CommandKey]] = {
    "train": {},
    "test": {"from_start": FROM_START},
    "profile": {"bits": CommandKey(None, _bits_or_assignment), "verbose": CommandKey(False, _flag("verbose")),
                "from_start": FROM_START},
    "calibrate": {"bits": CommandKey(None, parse_bits_option), "num_batches": CommandKey(50, _positive_int("num_batches")),
                  "out": CommandKey(None, _out, raw=True), "from_start": FROM_START},
    "export": {"bits": CommandKey(None, parse_bits_option), "out": CommandKey(None, _out, raw=True),
               "assignments": CommandKey(None, _assignment_files, raw=True),
               "bias": CommandKey(None, _bias), "graph": CommandKey(None, _graph),  # bias=: retired, one line
               "calibration_images": CommandKey(CALIBRATION_IMAGES, _positive_int("calibration_images")),
               "accuracy_level": CommandKey(ACCURACY_LEVEL, _accuracy_level), "from_start": FROM_START},
    "search": {"cost": CommandKey("weight_bytes", _choice("cost", COSTS)), "budget": CommandKey(None, _positive_number("budget")),
               "points": CommandKey(9, _positive_int("points")),
               "calibration_images": CommandKey(512, _positive_int("calibration_images")),
               "held_out_images": CommandKey(None, _positive_int("held_out_images")),
               "accuracy_level": CommandKey(ACCURACY_LEVEL, _accuracy_level),
               "out": CommandKey(None, _out_folder, raw=True), "from_start": FROM_START},
}


def split_command_keys(command: str, args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take the command's own key=value arguments (bits=7, out=...) out of the config overrides, validated."""
    import yaml

    keys = COMMAND_KEYS[command]
    options = {key: spec.default for key, spec in keys.items()}
    rest = []
    for arg in args:
        key, sep, text = arg.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            rest.append(arg)
            continue
        spec = keys[key]
        if spec.raw or text.startswith("@"):  # a path, or @FILE (YAML reserves the @)
            value: Any = text
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ConfigError(f"cannot parse {key}={text!r}") from None
        options[key] = spec.parse(value)
    return rest, options


# ---------------------------------------------------------------- argument parsing
class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error form: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _add_arguments(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    parser.add_argument("args", nargs="*", metavar="app:PATH | key=value")
    parser.add_argument("--keys", action="store_true", help="list every config key with its default and exit")
    if name == "export":
        parser.add_argument("--format", choices=EXPORT_FORMATS, default="packed",
                            help="packed: one safetensors file for every bit-width; pte: one ExecuTorch program, a method "
                                 "per bit-width; onnx: a folder with an all-integer graph per bit-width (a quantize/dequantize graph "
                                 "where that has no rule: graph=qdq), or the file of bits=B (may stand anywhere among "
                                 "the other arguments)")
    return parser


def _command_parser(name: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"adabits {name}", description=COMMANDS[name], epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return _add_arguments(parser, name)


def _parser() -> argparse.ArgumentParser:
    """The top level: the list of commands (each command's own parser is `_command_parser`)."""
    parser = _Parser(prog="adabits", description="Train, evaluate and deploy AdaBits models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_text in COMMANDS.items():
        _add_arguments(sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                                      formatter_class=argparse.RawDescriptionHelpFormatter), name)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command, then its arguments with options (`--format onnx`) anywhere among `app:... key=value`."""
    if not argv or argv[0] not in COMMANDS:
        return _parser().parse_args(argv)  # --help, or a usage error for an unknown command
    args = _command_parser(argv[0]).parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def _list_keys() -> None:
    for name, info in TrainConfig.model_fields.items():
        print(f"{name}: {info.default!r}")


def run(command: str, args: list[str], export_format: str = "packed", stop: StopRequest | None = None) -> int:
    """Load the config, then run the command; UserErrors propagate (main prints them).

    Only `train` (and `test` under torchrun, whose processes share the validation set) builds a
    Trainer; the other commands load the trained model alone (engine/deploy.py).
    """
    args, options = split_command_keys(command, args)
    if command == "calibrate" and options["bits"] is None:
        raise ConfigError("calibrate needs bits=B, the bit-width to add (e.g. bits=7 or bits=[4,8])")
    main_process = distributed.env_rank() == 0
    loaded = load_config(args + (["test_only=true"] if command == "test" else []))
    cfg = loaded.config
    for note in loaded.notes if main_process else []:
        print(f"note: {note}", file=sys.stderr)
    if command == "profile":
        print(deploy.profile(cfg, options["bits"], options["verbose"], options["from_start"]))
        return 0
    if command == "calibrate":
        print(deploy.calibrate(cfg, options["bits"], options["num_batches"], options["out"], options["from_start"]))
        return 0
    if command == "search":
        print(run_search(cfg, options["cost"], options["budget"], options["points"], options["calibration_images"],
                         options["held_out_images"], options["out"], options["from_start"], options["accuracy_level"]))
        return 0
    if command == "export":
        print(deploy.export(cfg, export_format, options["bits"], options["out"], options["from_start"],
                            options["graph"], options["calibration_images"], options["assignments"],
                            options["accuracy_level"]))
        return 0
    if cfg.test_only:  # one path, one process or many (each evaluates its shard)
        session = RunSession(cfg, run_dir(cfg), print, None)
        try:
            session.join(distributed.device_for(session.dist, resolve_device(cfg.device)))
            text = deploy.evaluate_trained(cfg, options.get("from_start", False), session.dist)
        finally:
            session.close()
        if main_process:
            print(text)
        return 0
    trainer = Trainer(cfg, stop=stop)
    try:
        trainer.prepare()
        trainer.fit()
    finally:
        trainer.close()
    if main_process:
        print(f"done: results in {trainer.run_dir}")
    return 0


def _error_prefix() -> str:
    """'error: ', or 'error (rank R): ' in a torchrun worker, whose messages interleave with the others'."""
    torchrun = distributed.launched_by_torchrun()
    return f"error (rank {distributed.env_rank()}): " if torchrun else "error: "


#: what a cluster scheduler sends before it kills a job: SIGTERM, and SLURM's warning `--signal=USR1@seconds`
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextmanager
def _scheduler_signals_stop(stop: StopRequest) -> Iterator[None]:
    """STOP_SIGNALS ask a training loop to save the step under way and stop; before it runs (or at a second
    signal) they stop the command at once, as Ctrl-C does. `stop.signal` is kept for the exit status 128 + it."""
    def handle(signum: int, _frame: object) -> None:
        first = stop.signal is None
        stop.signal = signum
        if not (first and stop.polled):
            raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread of the interpreter: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_by(stop: StopRequest) -> str:
    return f"stopped by {signal.Signals(stop.signal).name}: " if stop.signal is not None else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `adabits` console script and of `python train.py`; returns the exit status."""
    keep_freed_memory()  # before anything large is allocated: no page faults for reused memory (adabits/memory.py)
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.keys:
        _list_keys()
        return 0
    stop = StopRequest()
    try:
        with _scheduler_signals_stop(stop):
            return run(args.command, args.args, getattr(args, "format", "packed"), stop)
    except Interrupted as exc:
        if distributed.env_rank() == 0:  # Ctrl-C reaches every torchrun worker; one message is enough
            print(f"\n{_stopped_by(stop)}{exc}", file=sys.stderr)
        return 128 + stop.signal if stop.signal is not None else EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\n{_stopped_by(stop) or 'interrupted: '}before training started; nothing was written",
              file=sys.stderr)
        return 128 + stop.signal if stop.signal is not None else EXIT_INTERRUPTED
    except UserError as exc:
        print(f"{_error_prefix()}{exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
