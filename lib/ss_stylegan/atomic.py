"""Atomic file writes (write to a temporary file in the same folder, fsync, then rename) and storage faults.

A reader (or a server killed mid-write) sees either the old file or the complete new one, never a
truncated mix. A write that fails (a full disk) leaves the old file as it was and no temporary file behind,
and raises :class:`StorageFullError` when the disk is full.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_file_mode()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file and move it over ``path`` atomically.

    Raises:
        StorageFullError: the disk is full; ``path`` is as it was and no temporary file is left.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; give the file the mode a plain open() would
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(err, OSError) and is_disk_full(err) and not isinstance(err, StorageFullError):
            raise StorageFullError(err.errno, f"the disk holding {path.parent} is full: {path.name} was not "
                                              "written (the file on disk is unchanged); free some space") from err
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a text file with a single ``write`` of the whole encoded line.

    A write that fails or is cut short (a full disk) is cut back off, so the file is exactly as it was; and a
    file that ends without a newline (a line torn by a crash) gets one first, so the new line starts on a line
    boundary instead of being glued onto the fragment.

    Raises:
        StorageFullError: the disk is full; the file is unchanged.
    """
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, _FILE_MODE)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes could be written")
        except OSError as err:
            os.ftruncate(fd, start)
            if is_disk_full(err):
                raise StorageFullError(err.errno, f"the disk holding {path} is full: a line was not appended "
                                                  "(the file is unchanged); free some space") from err
            raise
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a rename, a new or removed file) durable; best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
