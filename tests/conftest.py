"""Fixtures shared by every test; plain helpers stay in the `_*_helpers.py` modules beside this file."""
from __future__ import annotations

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
