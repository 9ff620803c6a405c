"""Markdown tables and the line under each rendered table naming where its numbers come from."""
from __future__ import annotations

from collections.abc import Sequence

from .source import Source


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A pipe table; cells are written as given (the table functions format their numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(sources: Sequence[Source]) -> str:
    """`Source: file (machine, date)`, one entry per file a table reads."""
    parts = [f"`{s.path}` (machine: {s.machine}; date: {s.date})" for s in sources]
    return "<sub>Rendered by `python -m benchmarks.report` from " + ", ".join(parts) + ".</sub>"
