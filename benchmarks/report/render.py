"""Rendering every marker block of the docs, in place or as a check."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .blocks import find_blocks, replace_blocks
from .markdown import provenance
from .source import ReportError, Source, load
from .table import Table

#: the markdown files whose blocks are rendered (globs from the repository root)
DOCS = ("README.md", "BENCHMARKS.md", "benchmarks/README.md", "docs/*.md")


@dataclass(frozen=True)
class Outcome:
    """What one pass found: the blocks that differ from their source, as `file: report:NAME`."""

    stale: list[str]
    blocks: int


def doc_files(root: Path) -> list[Path]:
    return sorted({path for pattern in DOCS for path in root.glob(pattern) if path.is_file()})


def render_block(name: str, tables: Mapping[str, Table], root: Path, cache: dict[str, Source], where: str) -> str:
    """The body of block `name`: the table, a blank line, the line naming its sources."""
    if name not in tables:
        raise ReportError(f"{where}: unknown table report:{name} (known: {', '.join(sorted(tables))})")
    table = tables[name]
    for path in table.sources:
        if path not in cache:
            try:
                cache[path] = load(root, path)
            except ReportError as exc:
                raise ReportError(f"{where}: report:{name}: {exc}") from None
    sources = [cache[path] for path in table.sources]
    return f"{table.build([s.data for s in sources])}\n\n{provenance(sources)}"


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(root: Path, tables: Mapping[str, Table], check: bool) -> Outcome:
    """Render every block under `root`; write the files (unless `check`) and return the stale blocks.
    Everything is rendered before anything is written, so a bad marker leaves every file as it was."""
    cache: dict[str, Source] = {}
    stale: list[str] = []
    updates: dict[Path, str] = {}
    count = 0
    for path in doc_files(root):
        where = path.relative_to(root).as_posix()
        text = path.read_text()
        blocks = find_blocks(text, where)
        rendered = {}
        for block in blocks:
            body = render_block(block.name, tables, root, cache, f"{where}:{block.start + 1}")
            rendered[block.start] = body
            if body != block.body:
                stale.append(f"{where}: report:{block.name}")
        count += len(blocks)
        new = replace_blocks(text, rendered, blocks)
        if new != text:
            updates[path] = new
    if not check:
        for path, text in updates.items():
            _write_atomically(path, text)
    return Outcome(stale, count)
