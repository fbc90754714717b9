"""A first-come-first-served lock for the suggestion path.

A server holds one lock across ``select`` and the reservation of its picks. With Python's own lock, a thread
that releases it can take it again before a woken waiter runs, so under 16 concurrent requests a few wait
many turns; :class:`FairLock` serves waiters in arrival order (``benchmarks/bench_suggestions.py`` measures
both).
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class FairLock:
    """A lock that is handed to waiting threads in the order they asked for it (not re-entrant).

    Use it as a context manager: ``with lock: ...``. On release the lock passes directly to the longest
    waiter, so no thread waits more turns than there are threads ahead of it.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()              # released by the holder that hands the lock over

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            if self._waiters:
                self._waiters.popleft().release()    # still held: ownership passes to that waiter
            else:
                self._held = False

    def waiting(self) -> bool:
        """Whether a thread is waiting for the lock now (a snapshot)."""
        return bool(self._waiters)

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
