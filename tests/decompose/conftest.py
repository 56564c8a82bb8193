"""Fixtures for the decomposition tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Run on one intra-op thread: these tensors are tiny, and on a busy machine thread hand-offs dominate
    (a 64 x 72 SVD took 250 ms with 2 contended threads against 0.5 ms with one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
