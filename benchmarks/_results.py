"""How every benchmark reports: its result as JSON on stdout and, with --out, in a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(result: dict[str, Any], out: str | Path | None) -> None:
    """Print `result` as indented JSON and, when `out` is given, write the same text there."""
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="", flush=True)
    if out:
        Path(out).write_text(text)
