"""Shared pytest setup: make ``tests/`` importable (``server_harness``) and shared fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: on 2 shared cores two threads per test are slower and less repeatable."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
