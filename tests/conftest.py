"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Runs the test with torch.set_num_threads(1), then restores the thread count. For files
    of small tensors: one thread is as fast, and on a shared machine a second thread that waits
    for a busy core slows every operator down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
