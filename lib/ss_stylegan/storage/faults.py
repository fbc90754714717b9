"""Storage faults: a full disk told apart from other write failures, logged once per episode.

:class:`StorageFullError` (HTTP 507 in the app) when the disk is full, :class:`StorageError` (503) for other
refused writes; :class:`FaultEpisodes` logs the first failure of an episode and the recovery, not every retry.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any

# -- storage faults ----------------------------------------------------------------------------------------
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(OSError):
    """A write that matters failed; nothing of it was stored. The message says what failed and what to do."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28] " prefix
        return self.strerror or super().__str__()


class StorageFullError(StorageError):
    """A write failed because the disk (or the user's quota) is full; nothing of it was stored."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an ``OSError`` or an SQLite error) says the disk or quota is full."""
    if isinstance(err, StorageFullError):
        return True
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    return getattr(err, "sqlite_errorcode", None) == 13  # SQLITE_FULL


class FaultEpisodes:
    """Logs a failing kind of write once per episode (its first failure), and once more when it works again,
    instead of once per request: a full disk refuses every label write until space returns."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()

    def failed(self, what: str, err: BaseException) -> None:
        with self._lock:
            first = what not in self._failing
            self._failing[what] = str(err)
        if first:
            self._log.error("%s failed: %s; nothing of it was stored. Further failures are not logged until it "
                            "works again", what, err)

    def recovered(self, what: str) -> None:
        with self._lock:
            if self._failing.pop(what, None) is None:
                return
        self._log.warning("%s works again", what)

    def failing(self) -> dict[str, str]:
        """``{what: the last error}`` of every kind of write failing now."""
        with self._lock:
            return dict(self._failing)


def free_space(folder: str | Path) -> dict[str, int] | None:
    """``{"free_bytes", "total_bytes"}`` of the file system holding ``folder`` (None when it cannot be read)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return {"free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


LOW_SPACE_BYTES = 1 << 30
"""Below this much free space a folder's report carries a warning."""


def space_report(folders: dict[str, Path]) -> dict[str, Any]:
    """``{name: free space of the disk holding the folder}`` (:func:`free_space`), each with a ``warning`` when
    it is below :data:`LOW_SPACE_BYTES` or cannot be read."""
    out: dict[str, Any] = {}
    for name, folder in folders.items():
        space = free_space(folder)
        if space is None:
            out[name] = {"warning": f"the free space of the {name} folder cannot be read"}
            continue
        out[name] = dict(space)
        if space["free_bytes"] < LOW_SPACE_BYTES:
            out[name]["warning"] = (f"only {space['free_bytes'] / 2**20:.0f} MiB free on the disk of the {name} "
                                    "folder: labels, uploads and new maps are refused when it is full")
    return out
