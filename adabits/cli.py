"""Command line: `adabits train | test | profile | calibrate | export app:apps/X.yml [key=value ...]`.

Bad input (config, data, checkpoints) prints one message on stderr and exits with status 2;
Ctrl-C exits with 130 after saying where the last checkpoint is. Under torchrun
(`torchrun --nproc_per_node=N train.py app:...`) rank 0 prints, and errors name their rank.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """config arguments:
  app:PATH.yml      the experiment file (a bare PATH.yml works too)
  key=value         override any key; the value is YAML (bits_list=[4,3,2], lr=0.05)
  bs:256            the original's form, still accepted (bs is batch_size)
examples:
  adabits train app:apps/fashion_mnist/q_resnet20_adabits.yml num_epochs=3
  adabits test app:apps/fashion_mnist/q_resnet20_adabits.yml pretrained_file=runs/q_resnet20_adabits/best_model.pt
  adabits profile app:apps/fashion_mnist/q_resnet20_adabits.yml [bits=4] [verbose=true]
  adabits calibrate app:apps/fashion_mnist/q_resnet20_adabits.yml bits=7 [num_batches=50] [out=PATH]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format packed [out=PATH]
  adabits export app:apps/fashion_mnist/q_resnet20_adabits.yml --format onnx bits=8 [bias=int32_fine|int32|float] [out=PATH]
"""

#: command-specific key=value arguments (not config keys), with their defaults
COMMAND_KEYS: dict[str, dict[str, object]] = {
    "train": {}, "test": {},
    "profile": {"bits": None, "verbose": False},
    "calibrate": {"bits": None, "num_batches": 50, "out": None},
    "export": {"bits": None, "out": None, "bias": None},
}
COMMANDS = {
    "train": "train (or resume) the run a config describes",
    "test": "evaluate every bit-width of a trained model (test_only=true)",
    "profile": "MACs, parameters, BitOPs and model size per bit-width",
    "calibrate": "add a bit-width to a trained model by re-estimating its BN statistics",
    "export": "write the trained model as one packed file (every bit-width) or as ONNX at one bit-width",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adabits", description="Train, evaluate and deploy AdaBits models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("args", nargs="*", metavar="app:PATH | key=value")
        p.add_argument("--keys", action="store_true", help="list every config key with its default and exit")
        if name == "export":
            p.add_argument("--format", choices=("packed", "onnx"), default="packed",
                           help="packed: one safetensors file for every bit-width; onnx: a QDQ graph at bits=B "
                                "(may stand anywhere among the other arguments)")
    return parser


def _options_last(argv: list[str]) -> list[str]:
    """Move `--format X` behind the positional arguments: argparse stops collecting `app:... key=value`
    at the first option, and users write the flag anywhere."""
    flags, rest = [], []
    i = 0
    while i < len(argv):
        if argv[i] == "--format" and i + 1 < len(argv):
            flags += argv[i:i + 2]
            i += 2
            continue
        (flags if argv[i].startswith("--format=") else rest).append(argv[i])
        i += 1
    return rest + flags


def _split_command_keys(command: str, args: list[str]) -> tuple[list[str], dict[str, object]]:
    """Take the command's own key=value arguments (bits=7, out=...) out of the config overrides."""
    import yaml

    from .engine import ConfigError

    options = dict(COMMAND_KEYS[command])
    rest = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.strip() in options:
            try:
                options[key.strip()] = yaml.safe_load(value) if key.strip() != "out" else value
            except yaml.YAMLError:
                raise ConfigError(f"cannot parse {key}={value!r}") from None
        else:
            rest.append(arg)
    return rest, options


def _list_keys() -> None:
    from .engine.config import TrainConfig

    for name, info in TrainConfig.model_fields.items():
        print(f"{name}: {info.default!r}")


def run(command: str, args: list[str], export_format: str = "packed") -> int:
    """Load the config, build everything, then run the command; UserError / DataError propagate."""
    from .engine import Trainer, UserError, load_config
    from .engine.distributed import env_rank
    from .engine.report import eval_table

    args, options = _split_command_keys(command, args)
    main_process = env_rank() == 0
    loaded = load_config(args + (["test_only=true"] if command == "test" else []))
    for note in loaded.notes if main_process else []:
        print(f"note: {note}", file=sys.stderr)
    if command in ("profile", "calibrate", "export"):
        from .engine import deploy

        if command == "profile":
            print(deploy.profile(loaded.config, options["bits"], bool(options["verbose"])))
        elif command == "calibrate":
            if options["bits"] is None:
                raise UserError("calibrate needs bits=B, the bit-width to add (e.g. bits=7)")
            print(deploy.calibrate(loaded.config, options["bits"], int(options["num_batches"]), options["out"]))
        else:
            print(deploy.export(loaded.config, export_format, options["bits"], options["out"], options["bias"]))
        return 0
    trainer = Trainer(loaded.config)
    try:
        trainer.prepare()
        if loaded.config.test_only:
            val = trainer.evaluate()
            if main_process:
                print(eval_table(val))
            return 0
        trainer.fit()
    finally:
        trainer.close()
    if main_process:
        print(f"done: results in {trainer.run_dir}")
    return 0


def _error_prefix() -> str:
    """'error: ', or 'error (rank R): ' in a torchrun worker, whose messages interleave with the others'."""
    from .engine.distributed import env_rank, launched_by_torchrun

    return f"error (rank {env_rank()}): " if launched_by_torchrun() else "error: "


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `adabits` console script and of `python train.py`; returns the exit status."""
    args = _parser().parse_args(_options_last(list(sys.argv[1:] if argv is None else argv)))
    if args.keys:
        _list_keys()
        return 0
    from .engine import Interrupted
    from .errors import UserError

    try:
        return run(args.command, args.args, getattr(args, "format", "packed"))
    except Interrupted as exc:
        from .engine.distributed import env_rank

        if env_rank() == 0:  # Ctrl-C reaches every torchrun worker; one message is enough
            print(f"\n{exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as exc:
        print(f"{_error_prefix()}{exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
