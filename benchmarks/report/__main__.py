"""`python -m benchmarks.report [--check] [--root DIR]`: exit 0 when every block is current (or was
rewritten), 1 with `--check` when some block differs from its source, 2 on a bad marker or source."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .registry import TABLES
from .render import run
from .source import ReportError

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each stale block")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"benchmarks.report: --root {args.root} is not a folder", file=sys.stderr)
        return 2
    try:
        outcome = run(args.root, TABLES, args.check)
    except ReportError as exc:
        print(f"benchmarks.report: {exc}", file=sys.stderr)
        return 2
    if args.check and outcome.stale:
        for block in outcome.stale:
            print(f"benchmarks.report: stale: {block} differs from its source; run python -m benchmarks.report",
                  file=sys.stderr)
        return 1
    verb = "checked" if args.check else "rendered"
    print(f"benchmarks.report: {verb} {outcome.blocks} blocks" + ("" if args.check else f", {len(outcome.stale)} rewritten"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
