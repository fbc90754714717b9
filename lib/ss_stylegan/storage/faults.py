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
