"""A result file as the tables read it: its JSON, and the machine and date the rendered block names."""
from __future__ import annotations

import json
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
    """The date the file records: when it was measured (`date`, which `benchmarks.common.report` writes), or,
    for files measured before that, `committed`: the date of the commit that first brought these numbers,
    no earlier than the measurement (written into the file, so a shallow clone renders the same)."""
    for block in (data, data.get("environment"), data.get("machine")):
        if isinstance(block, dict) and isinstance(block.get("date"), str):
            return block["date"]
    return f"committed {data['committed']}" if isinstance(data.get("committed"), str) else None


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
    return Source(path, data, machine_of(data), recorded_date(data) or NOT_RECORDED)
