"""Finding and replacing the `<!-- report:NAME -->` ... `<!-- /report:NAME -->` blocks of a markdown file."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .source import ReportError

OPEN = re.compile(r"^<!-- report:([\w.-]+) -->$")
CLOSE = "<!-- /report:{} -->"


@dataclass(frozen=True)
class Block:
    """One marker block: the table's name, the 0-based lines of its markers, the text between them."""

    name: str
    start: int
    end: int
    body: str


def find_blocks(text: str, where: str) -> list[Block]:
    """Every block of `text`, in order; a block left open is a ReportError naming `where` and the line."""
    lines = text.split("\n")
    blocks = []
    index = 0
    while index < len(lines):
        match = OPEN.match(lines[index].strip())
        if match:
            name = match.group(1)
            try:
                end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == CLOSE.format(name))
            except StopIteration:
                raise ReportError(f"{where}:{index + 1}: report:{name} has no closing {CLOSE.format(name)}") from None
            blocks.append(Block(name, index, end, "\n".join(lines[index + 1:end])))
            index = end
        index += 1
    return blocks


def replace_blocks(text: str, rendered: dict[int, str], blocks: list[Block]) -> str:
    """`text` with the body of each block (keyed by its start line) replaced by `rendered[start]`."""
    lines = text.split("\n")
    for block in reversed(blocks):
        lines[block.start + 1:block.end] = rendered[block.start].split("\n")
    return "\n".join(lines)
