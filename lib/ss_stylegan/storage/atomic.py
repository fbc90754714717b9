"""Atomic file writes (write to a temporary file in the same folder, fsync, then rename) and appends.

A reader (or a server killed mid-write) sees either the old file or the complete new one, never a
truncated mix. A write that fails (a full disk) leaves the old file as it was and no temporary file behind,
and raises :class:`~ss_stylegan.storage.faults.StorageFullError` when the disk is full.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ss_stylegan.storage.faults import StorageFullError, is_disk_full


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
