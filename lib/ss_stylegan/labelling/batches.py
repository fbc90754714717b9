"""Writing what changed in a background thread, a batch at a time, off the request's path.

A request only marks what it changed (:meth:`BatchWriter.changed`); a thread gathers the marks for ``delay_s``
(a burst of labels: one write) and hands them to :meth:`BatchWriter._write`. What could not be written (a full
disk) is tried again after ``retry_s``. A reader that needs everything written waits with :meth:`flush`.
The label store's per-image exports (:mod:`.label_files`) and the app's label counts in MONAI Label's
datastore file are such writers.
"""

from __future__ import annotations

import threading
import time


class BatchWriter:
    """Base class: subclasses write one batch in :meth:`_write`.

    Args:
        name: the thread's name.
        delay_s: how long marks gather before a batch is written (0: at once).
        retry_s: after a batch left something unwritten, how long before it is tried again.
    """

    def __init__(self, name: str, delay_s: float, retry_s: float) -> None:
        self.name = name
        self.delay_s = delay_s
        self.retry_s = retry_s
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._busy = False
        self._urgent = False  # a reader waits (flush): write without gathering
        self._failing = False  # the last batch left something unwritten (a full disk)
        self._thread: threading.Thread | None = None

    def changed(self, *keys: str) -> None:
        """Mark ``keys`` as changed; they are written in the background."""
        with self._cond:
            self._pending.update(keys)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything marked so far is written; return whether it is. Returns False at once when the
        last try failed and nothing new is being written (a full disk: a reader does not wait for it)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._pending or self._busy) and time.monotonic() < deadline:
                if self._failing and not self._busy:
                    return False
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            return not (self._pending or self._busy)

    def _write(self, batch: set[str]) -> set[str]:
        """Write ``batch``; return the keys that could not be written (tried again later)."""
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if not self._cond.wait(timeout=30.0):
                        self._thread = None
                        return
                deadline = time.monotonic() + self.delay_s
                while not self._urgent and time.monotonic() < deadline:
                    self._cond.wait(timeout=deadline - time.monotonic())
                batch, self._pending, self._urgent = self._pending, set(), False
                self._busy = True
            failed = self._write(batch)
            with self._cond:
                self._busy = False
                self._failing = bool(failed)
                self._pending |= failed
                self._cond.notify_all()
                if failed and not self._urgent:
                    self._cond.wait(timeout=self.retry_s)
