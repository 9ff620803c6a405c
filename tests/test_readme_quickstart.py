"""The README's quickstart runs as written: its code block, between the `quickstart` markers, is executed with a
float model trained in plain PyTorch on Fashion-MNIST and a few batches of it. docs/getting_started.md holds the
same block."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from _pretrained import fashion_mnist, trained_cnn

README = Path(__file__).parent.parent / "README.md"
GETTING_STARTED = Path(__file__).parent.parent / "docs" / "getting_started.md"


def quickstart(path: Path = README) -> str:
    """The Python of a quickstart block (fails when the markers or the code fence are gone)."""
    found = re.search(r"<!-- quickstart -->\s*```python\n(.*?)```\s*<!-- /quickstart -->", path.read_text(), re.S)
    assert found, f"{path.name} has no ```python block between <!-- quickstart --> and <!-- /quickstart -->"
    return found.group(1)


def test_the_docs_site_shows_the_same_quickstart():
    assert quickstart(GETTING_STARTED) == quickstart(README)


def test_the_readme_is_short():
    assert len(README.read_text()) < 8000


def test_the_quickstart_block_is_about_fifteen_lines():
    lines = [line for line in quickstart().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 22, len(lines)


def test_the_quickstart_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    images, labels = fashion_mnist(2048)
    model = trained_cnn(images, labels)
    accuracy = float((model(images[:512]).argmax(1) == labels[:512]).float().mean())
    assert accuracy > 0.3  # trained, not random (10 classes)
    loader = list(zip(images[:320].split(64), labels[:320].split(64)))  # five batches: five joint steps
    monkeypatch.chdir(tmp_path)
    namespace = {"model": model, "loader": loader}
    exec(compile(quickstart(), str(README), "exec"), namespace)
    net = namespace["net"]
    import adabits

    assert adabits.get_bits(net) == 4  # switched, and restored after the `with` block
    assert namespace["logits"].shape == (64, 10)
    assert (tmp_path / "net_onnx").is_dir()
    out = capsys.readouterr().out
    assert "5" in out and "4" in out
