"""One training at a time per workspace, across server restarts: a lock file that names its holder.

The training process holds an exclusive ``flock`` on ``<workspace>/train.lock`` for as long as it runs and
writes its PID, start time and command into the file. The kernel releases the lock when the process ends,
however it ends, so a stale file never blocks a new training. A server started later (say after the
previous one was killed with ``kill -9``, which leaves its training subprocess running) finds the holder
with :meth:`TrainingLock.holder`, reports it, and can stop it with :meth:`TrainingLock.stop_holder`:
first the workspace's ``STOP`` file (the training loop saves a checkpoint and returns), then SIGTERM,
then SIGKILL.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TrainingBusyError(RuntimeError):
    """Another process holds the training lock; the message names it and says how to stop it.

    Attributes:
        holder: the process holding the lock (None when it could not be identified).
    """

    def __init__(self, holder: LockHolder | None, who: str = "") -> None:
        self.holder = holder
        who = who or (f"process {holder.pid}, started {holder.started_text}" if holder else "another process")
        super().__init__(f"a training is already running ({who}); wait for it (GET /train/) or stop it "
                         "(DELETE /train/)")


@dataclasses.dataclass(frozen=True)
class LockHolder:
    """The process that holds the training lock, as it described itself."""

    pid: int | None
    started: float | None
    command: str = ""

    @property
    def started_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "at an unknown time"

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started, "started_text": self.started_text}


class TrainingLock:
    """The training lock of one workspace.

    Args:
        path: the lock file (``<workspace>/train.lock``).
        acquire_tries: attempts to take the lock before giving up (a server probing the lock holds it
            for microseconds; a second try after ``retry_s`` rules that out).
        retry_s: pause between attempts.
    """

    def __init__(self, path: str | Path, acquire_tries: int = 5, retry_s: float = 0.05) -> None:
        self.path = Path(path)
        self.acquire_tries = acquire_tries
        self.retry_s = retry_s

    @contextmanager
    def hold(self, command: str = "") -> Iterator[None]:
        """Hold the lock for the duration of the block, with this process's PID written into the file.

        Raises:
            TrainingBusyError: another process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(self.acquire_tries):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == self.acquire_tries - 1:
                        raise TrainingBusyError(self._read_holder()) from None
                    time.sleep(self.retry_s)
            record = {"pid": os.getpid(), "started": time.time(), "command": command or " ".join(sys.argv)[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
            yield
        finally:
            os.close(fd)  # releases the lock; the file stays (it is only a name for the lock)

    def holder(self) -> LockHolder | None:
        """The process holding the lock now, or None when nobody does (a probe, not a wait)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._read_holder() or LockHolder(None, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _read_holder(self) -> LockHolder | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            return LockHolder(int(data["pid"]), float(data["started"]), str(data.get("command", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stop_holder(self, request_stop: Callable[[], None], grace_s: float = 10.0,
                    poll_s: float = 0.1) -> LockHolder | None:
        """Stop the process holding the lock; return who it was (None when nobody held it).

        Steps: ``request_stop()`` (the workspace's STOP file, honoured between training steps), then after
        ``grace_s`` SIGTERM, then after another ``grace_s`` SIGKILL. Returns once the process has ended
        (not only released the lock). Signals go only to the PID the holder wrote, and only while that
        process holds the lock or is still finishing after releasing it.
        """
        holder = self.holder()
        if holder is None:
            return None
        if holder.pid is None:
            log.error("the training lock %s is held by a process that did not write its PID; stop it by hand",
                      self.path)
            return holder
        request_stop()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                if not process_running(holder.pid):
                    return holder
                log.warning("training process %d did not stop within %.0f s; sending %s", holder.pid, grace_s,
                            signal.Signals(sig).name)
                try:
                    os.kill(holder.pid, sig)
                except ProcessLookupError:
                    return holder
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if self.holder() is None and not process_running(holder.pid):
                    return holder
                time.sleep(poll_s)
        return holder


def process_running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie waiting for its parent has); a process of another
    user counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True
