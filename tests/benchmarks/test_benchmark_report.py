"""benchmarks/report: the docs' tables are what their result files say; --check fails on any drift (issue 31)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.report.__main__ import main
from benchmarks.report.blocks import find_blocks
from benchmarks.report.registry import TABLES
from benchmarks.report.render import run

ROOT = Path(__file__).resolve().parents[2]


def _copy(root: Path) -> Path:
    """The docs and the results of this checkout under `root` (outside git: every date is in its file)."""
    for name in ("README.md", "BENCHMARKS.md", "benchmarks/README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copytree(ROOT / "benchmarks" / "results", root / "benchmarks" / "results",
                    ignore=shutil.ignore_patterns("*.png"))
    assert main(["--check", "--root", str(root)]) == 0  # no date is read from git history
    return root


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy(tmp_path_factory.mktemp("repo"))


def test_the_repository_is_current() -> None:
    """What CI runs: every table in the docs is the one its committed result file renders."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.report", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "checked" in done.stdout


def test_every_registered_table_is_in_some_doc() -> None:
    used = {block.name for path in [ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "benchmarks/README.md",
                                    *(ROOT / "docs").glob("*.md")] for block in find_blocks(path.read_text(), "")}
    assert set(TABLES) <= used


def test_a_changed_number_in_a_result_file_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(tmp_path)
    path = root / "benchmarks/results/accuracy/alpha_init.json"
    data = json.loads(path.read_text())
    data["mse_alpha"]["4"] = 84.7
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["--check", "--root", str(root)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "benchmarks.report: stale: benchmarks/README.md: report:alpha_init differs from its source; "
        "run python -m benchmarks.report"]
    assert main(["--root", str(root)]) == 0  # rendering mends it
    assert f"| 4 | {data['fixed_alpha']['4']:.2f} | 84.70 |" in (root / "benchmarks/README.md").read_text()
    assert main(["--check", "--root", str(root)]) == 0


@pytest.mark.parametrize(("marker", "message"), [
    ("<!-- report:no_such_table -->\n<!-- /report:no_such_table -->", "unknown table report:no_such_table"),
    ("<!-- report:alpha_init -->\n", "report:alpha_init has no closing <!-- /report:alpha_init -->"),
])
def test_a_bad_marker_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               marker: str, message: str) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.md").write_text(f"# x\n\n{marker}\n")
    assert main(["--check", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and err.startswith("benchmarks.report: docs/x.md:3")


def test_a_root_that_is_not_a_folder_is_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--root", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"benchmarks.report: --root {tmp_path / 'nowhere'} is not a folder\n"


def test_a_missing_source_file_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "BENCHMARKS.md").write_text("<!-- report:alpha_init -->\n<!-- /report:alpha_init -->\n")
    assert main(["--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("benchmarks.report: BENCHMARKS.md:1: report:alpha_init: missing source file "
                                       "benchmarks/results/accuracy/alpha_init.json\n")
    assert (tmp_path / "BENCHMARKS.md").read_text() == "<!-- report:alpha_init -->\n<!-- /report:alpha_init -->\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(TABLES)), data=st.data())
def test_any_changed_cell_of_any_table_fails_the_check(copy: Path, name: str, data: st.DataObject) -> None:
    """Edit one cell of a rendered table by hand: the check names that block, and rendering restores it."""
    doc = next(path for path in [copy / "README.md", copy / "BENCHMARKS.md", copy / "benchmarks/README.md",
                                 *sorted((copy / "docs").glob("*.md"))]
               if any(block.name == name for block in find_blocks(path.read_text(), "")))
    text = doc.read_text()
    block = next(block for block in find_blocks(text, "") if block.name == name)
    rows = [i for i, line in enumerate(block.body.split("\n")) if line.startswith("| ") and i != 1]
    row = data.draw(st.sampled_from(rows[1:]), label="row")  # not the header
    body = block.body.split("\n")
    cells = body[row].split(" | ")
    column = data.draw(st.integers(0, len(cells) - 1), label="column")
    cells[column] = cells[column] + data.draw(st.sampled_from(["0", "1", " x"]), label="edit")
    body[row] = " | ".join(cells)
    lines = text.split("\n")
    lines[block.start + 1:block.end] = body
    doc.write_text("\n".join(lines))
    try:
        outcome = run(copy, TABLES, check=True)
        assert [stale.split(": ")[-1] for stale in outcome.stale] == [f"report:{name}"]
    finally:
        doc.write_text(text)
