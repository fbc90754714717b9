"""Shared pytest setup: make ``tests/`` importable so helpers such as ``server_harness`` can be imported."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
