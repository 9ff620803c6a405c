"""The tests marked `openvino`, in a process of their own (tests/conftest.py says why): their pass is this test's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import OPENVINO_PROCESS

ROOT = Path(__file__).resolve().parents[2]


def test_the_openvino_tests_pass_in_their_own_process():
    pytest.importorskip("openvino")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "openvino",
                           "tests/runtime"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, OPENVINO_PROCESS: "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " deselected" in done.stdout  # the marked tests ran, the rest did not
