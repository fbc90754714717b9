"""What a folder holds, file by file, to check that a published version never changes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """``{relative path: (size, mtime_ns, sha256)}`` of every file under ``folder`` (folders are listed as
    ``(-1, 0, "")`` so an added or removed empty folder shows too)."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_dir():
            out[name] = (-1, 0, "")
            continue
        st = path.stat()
        out[name] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out
