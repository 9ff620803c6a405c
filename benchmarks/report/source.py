"""A result file as the tables read it: its JSON, and the machine and date the rendered block names."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"


class ReportError(ValueError):
    """A marker or source the report can't render (unknown table, missing file, unclosed block): one line, exit 2."""


@dataclass(frozen=True)
class Source:
    """One committed result file: `path` relative to the repository root, its parsed JSON."""

    path: str
    data: dict[str, Any]
    machine: str
    date: str


def machine_of(data: dict[str, Any]) -> str:
    """The CPU model from the file's `machine` block (or the older `environment` block); files that
    recorded only a string or nothing say so rather than guess."""
    for key in ("machine", "environment"):
        block = data.get(key)
        if isinstance(block, dict) and block.get("cpu"):
            return str(block["cpu"])
    return NOT_RECORDED


def recorded_date(data: dict[str, Any]) -> str | None:
    """The date the file itself records, if any."""
    for block in (data, data.get("environment"), data.get("machine")):
        if isinstance(block, dict) and isinstance(block.get("date"), str):
            return block["date"]
    return None


def commit_date(root: Path, path: str) -> str:
    """`committed DATE`: the date of the last commit that changed the file's content (a pure move is
    skipped: moving a result is not measuring it), which is no earlier than the measurement.
    NOT_RECORDED outside a git checkout or for an uncommitted file."""
    try:
        log = subprocess.run(["git", "log", "--follow", "--format=@%cs", "--numstat", "--", path],
                             cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return NOT_RECORDED
    date = None
    for line in log.splitlines():
        if line.startswith("@"):
            date = line[1:]
        elif line.strip() and date is not None:
            added, removed = line.split("\t")[:2]
            if (added, removed) != ("0", "0"):
                return f"committed {date}"
    return f"committed {date}" if date else NOT_RECORDED


def load(root: Path, path: str) -> Source:
    """Read `path` (relative to `root`); a missing or unreadable file is a ReportError."""
    file = root / path
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ReportError(f"missing source file {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"unreadable source file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ReportError(f"source file {path} is not a JSON object")
    return Source(path, data, machine_of(data), recorded_date(data) or commit_date(root, path))
