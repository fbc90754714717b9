"""Suggestions reserved for the annotator they were given to, with expiry and a per-owner cap.

Two annotators asking in turn never get the same slice: a suggestion is reserved for its ``client_id`` until
it is labelled, released or expires. In memory only: a restarted server starts with no reservations.
"""

from __future__ import annotations

import logging
import threading
import time

from ss_stylegan.labelling.fair_lock import FairLock

log = logging.getLogger(__name__)

class ReservationLimitError(ValueError):
    """A client asked for more suggestions than it may hold reserved at once (HTTP 429)."""


class PendingSuggestions:
    """Slices suggested to a client and not yet labelled, reserved for ``ttl_s`` seconds.

    Two annotators asking at the same time get different slices: a strategy excludes every slice
    reserved by another client. Each *owner* (the signed-in user, or the client id when the server has
    no login) may hold at most ``cap`` reservations over all its clients, so one client cannot reserve
    every slice and leave everyone else with nothing. Thread-safe; in memory (a restart frees all
    reservations).
    """

    def __init__(self, ttl_s: float = 600.0, cap: int = 32) -> None:
        self.ttl_s = float(ttl_s)
        self.cap = int(cap)
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], tuple[str, str, float]] = {}  # key -> (client, owner, expiry)
        # held by a strategy while it chooses and reserves, so two requests cannot pick the same slice;
        # first come, first served, so no annotator waits more turns than there are requests ahead
        self.selection_lock = FairLock()

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, _, t) in self._by_key.items() if t <= now]:
            del self._by_key[key]

    def reserved(self, exclude_client: str | None = None) -> set[tuple[str, int]]:
        """Keys reserved by any client other than ``exclude_client``."""
        with self._lock:
            self._expire(time.monotonic())
            return {k for k, (c, _, _) in self._by_key.items() if c != exclude_client}

    def room(self, client: str, owner: str | None = None) -> int:
        """How many suggestions ``client`` may be given now: the cap, less what the same owner holds
        under its other clients (a new request replaces the client's own reservations)."""
        owner = owner or client
        with self._lock:
            self._expire(time.monotonic())
            held = sum(1 for c, o, _ in self._by_key.values() if o == owner and c != client)
        return max(0, self.cap - held)

    def check_count(self, count: int, client: str, owner: str | None = None) -> None:
        """Raise :class:`ReservationLimitError` when ``count`` suggestions would exceed the owner's cap."""
        room = self.room(client, owner)
        if count > room:
            held = self.cap - room
            raise ReservationLimitError(
                f"count {count} is more than this client may hold reserved: at most {self.cap} suggestions "
                f"per user at once (setting suggestion_cap)"
                + (f", and {held} are reserved under its other client ids" if held else "")
                + "; label the slices already suggested or ask for fewer")

    def reserve(self, client: str, keys: list[tuple[str, int]], owner: str | None = None) -> None:
        """Reserve ``keys`` for ``client``, replacing that client's previous reservations."""
        owner = owner or client
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            for key in [k for k, (c, _, _) in self._by_key.items() if c == client]:
                del self._by_key[key]
            for key in keys:
                self._by_key[key] = (client, owner, now + self.ttl_s)

    def release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def release_client(self, client: str, owner: str | None = None) -> list[tuple[str, int]]:
        """Give back every reservation of ``client`` held by ``owner`` (default: the client itself), as a
        client does when its user stops labelling; returns the keys given back. Reservations of the same
        client id under another owner (another signed-in user) are left alone."""
        owner = owner or client
        with self._lock:
            self._expire(time.monotonic())
            keys = [k for k, (c, o, _) in self._by_key.items() if c == client and o == owner]
            for key in keys:
                del self._by_key[key]
        return sorted(keys)
