"""adabits.atomic.atomic_write: the target is replaced whole or not at all, and no temp file stays behind."""
import os
import re
from pathlib import Path

import pytest

from adabits.atomic import atomic_write


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_success_replaces_the_file_through_a_temp_file_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
        (temp,) = [p for p in tmp_path.iterdir() if p != target]
        assert re.fullmatch(r"\.model\.pt\.[0-9a-f]{8}\.tmp", temp.name)
        assert target.read_bytes() == b"old"  # readers still see the old file while the new one is written
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["model.pt"]


def test_a_failure_keeps_the_old_file_and_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["model.pt"]


def test_a_failing_rename_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: object, dst: object) -> None:
        raise PermissionError("read-only target")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        with atomic_write(tmp_path / "new.bin") as f:
            f.write(b"data")
    assert _names(tmp_path) == []


def test_text_mode_missing_folders_and_the_permissions_of_open(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "notes.txt"
    with atomic_write(target, "w", encoding="utf-8") as f:
        f.write("grün\n")
    assert target.read_text(encoding="utf-8") == "grün\n"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # 0o666 less the umask, as open()


def test_only_whole_file_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        atomic_write(tmp_path / "x", "ab")  # type: ignore[call-overload]
    assert _names(tmp_path) == []
