"""Fixtures shared by every test; plain helpers stay in the `_*_helpers.py` modules beside this file."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import torch
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps a cache (`.hypothesis/`) in the current folder whatever a test's `database` says; the tests
# write nothing into the checkout, so it goes to a temporary folder of this session
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="adabits-hypothesis-"))


@pytest.fixture(autouse=True, scope="session")
def single_threaded_torch() -> Iterator[None]:
    """torch runs on one thread in every test (module fixtures included): tiny ops on a shared CPU.

    More threads only contend there, and one thread makes float results independent of the machine.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def threads_restored() -> Iterator[None]:
    """A run with `num_threads: N` sets torch's threads for the process; the next test starts at one again."""
    yield
    torch.set_num_threads(1)


#: set in the process that runs the tests marked `openvino` (tests/runtime/test_openvino_process.py)
OPENVINO_PROCESS = "ADABITS_OPENVINO_PROCESS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `openvino` run in a process of their own: with OpenVINO's CPU plugin loaded, an ExecuTorch
    test later in the same process crashed with a segmentation fault (three full runs out of three; none
    with those tests left out). `test_openvino_process.py` runs them there; elsewhere they are deselected."""
    if os.environ.get(OPENVINO_PROCESS):
        return
    isolated = [item for item in items if item.get_closest_marker("openvino")]
    if isolated:
        config.hook.pytest_deselected(items=isolated)
        items[:] = [item for item in items if not item.get_closest_marker("openvino")]
