"""``python -m ss_stylegan train|embed ...`` (see :mod:`ss_stylegan.cli`)."""

from __future__ import annotations

from ss_stylegan.cli import main

raise SystemExit(main())
