"""Command line: `adabits train app:apps/X.yml [key=value ...]` and `adabits test ...`.

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
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adabits", description="Train and evaluate AdaBits models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,test}")
    for name, help_text in (("train", "train (or resume) the run a config describes"),
                            ("test", "evaluate every bit-width of a trained model (test_only=true)")):
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("args", nargs="*", metavar="app:PATH | key=value")
        p.add_argument("--keys", action="store_true", help="list every config key with its default and exit")
    return parser


def _list_keys() -> None:
    from .engine.config import TrainConfig

    for name, info in TrainConfig.model_fields.items():
        print(f"{name}: {info.default!r}")


def run(command: str, args: list[str]) -> int:
    """Load the config, build everything, then train or evaluate; UserError / DataError propagate."""
    from .engine import Trainer, load_config
    from .engine.distributed import env_rank
    from .engine.report import eval_table

    main_process = env_rank() == 0
    loaded = load_config(args + (["test_only=true"] if command == "test" else []))
    for note in loaded.notes if main_process else []:
        print(f"note: {note}", file=sys.stderr)
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
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.keys:
        _list_keys()
        return 0
    from .data import DataError
    from .engine import Interrupted, UserError

    try:
        return run(args.command, args.args)
    except Interrupted as exc:
        from .engine.distributed import env_rank

        if env_rank() == 0:  # Ctrl-C reaches every torchrun worker; one message is enough
            print(f"\n{exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted before training started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, DataError) as exc:
        print(f"{_error_prefix()}{exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
