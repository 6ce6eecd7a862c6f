"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny models run far faster on a shared, loaded machine, and the crash tests' killed
    child (OMP_NUM_THREADS=1) does the same arithmetic as the runs in the test process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
