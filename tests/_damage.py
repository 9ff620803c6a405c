"""Damaged copies of a file's bytes, drawn by Hypothesis: what the reader property tests feed every file reader."""
from __future__ import annotations

from hypothesis import strategies as st

KINDS = ("random", "cut", "padded", "flipped", "empty")


def damaged(original: bytes, data: st.DataObject, kinds: tuple[str, ...] = KINDS, flip_within: int | None = None) -> bytes:
    """`original` replaced by random bytes, cut, padded, with one byte flipped (within its first `flip_within`
    bytes when given), or emptied; the kind drawn from `kinds`."""
    how = data.draw(st.sampled_from(kinds))
    if how == "random":
        return data.draw(st.binary(min_size=1, max_size=4096))
    if how == "cut":
        return original[:data.draw(st.integers(0, len(original) - 1))]
    if how == "padded":
        return original + data.draw(st.binary(min_size=1, max_size=64))
    if how == "flipped":
        at = data.draw(st.integers(0, (flip_within or len(original)) - 1))
        return original[:at] + bytes([original[at] ^ data.draw(st.integers(1, 255))]) + original[at + 1:]
    return b""
