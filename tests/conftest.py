"""Shared pytest setup: make ``tests/`` importable (``server_harness``) and shared fixtures."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# This checkout's library, ahead of whichever checkout the venv's editable install points at (a git
# worktree shares the venv of the main checkout), here and in every subprocess a test starts.
_LIB = str(Path(__file__).resolve().parents[1] / "lib")
if sys.path[:1] != [_LIB]:
    sys.path.insert(0, _LIB)
os.environ["PYTHONPATH"] = os.pathsep.join([_LIB, *filter(None, [os.environ.get("PYTHONPATH")])])


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: on 2 shared cores two threads per test are slower and less repeatable."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
