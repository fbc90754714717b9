"""Suggestions reserved per client (``labelling/reservations.py``): expiry, giving back, the per-owner cap."""

from __future__ import annotations

import time

import pytest

from ss_stylegan.labelling.reservations import PendingSuggestions, ReservationLimitError


def test_pending_suggestions_per_client_with_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    import ss_stylegan.labelling.reservations as workspace_module

    class Clock:  # the test's own clock for the module: a slow machine cannot make a reservation lapse early
        def __getattr__(self, name: str):
            return getattr(time, name)

        def monotonic(self) -> float:
            return now[0]

    now = [1000.0]
    monkeypatch.setattr(workspace_module, "time", Clock())
    pending = PendingSuggestions(ttl_s=0.2)
    pending.reserve("alice", [("a", 1), ("a", 2)])
    pending.reserve("bob", [("a", 3)])
    assert pending.reserved(exclude_client="bob") == {("a", 1), ("a", 2)}
    pending.reserve("alice", [("a", 4)])  # replaces alice's earlier reservations
    assert pending.reserved() == {("a", 3), ("a", 4)}
    pending.release(("a", 3))
    assert pending.reserved() == {("a", 4)}
    now[0] += 0.19
    assert pending.reserved() == {("a", 4)}
    now[0] += 0.02
    assert pending.reserved() == set()


def test_a_client_gives_back_only_its_own_reservations() -> None:
    pending = PendingSuggestions(ttl_s=60, cap=8)
    pending.reserve("tab-1", [("a", 1), ("a", 2)], owner="user:ann")
    pending.reserve("tab-2", [("a", 3)], owner="user:ann")
    pending.reserve("bob", [("b", 1)])
    assert pending.release_client("tab-1", owner="user:eve") == []  # the same client id, another user
    assert pending.release_client("tab-1", owner="user:ann") == [("a", 1), ("a", 2)]
    assert pending.reserved() == {("a", 3), ("b", 1)}
    assert pending.room("tab-2", "user:ann") == 8 and pending.room("tab-9", "user:ann") == 7
    assert pending.release_client("bob") == [("b", 1)]  # without an owner the client owns its reservations
    assert pending.release_client("bob") == []


def test_reservations_are_capped_per_owner() -> None:
    pending = PendingSuggestions(ttl_s=60, cap=3)
    pending.check_count(3, "alice-1", owner="alice")
    with pytest.raises(ReservationLimitError, match="at most 3 suggestions per user"):
        pending.check_count(4, "alice-1", owner="alice")
    pending.reserve("alice-1", [("a", 1), ("a", 2)], owner="alice")
    assert pending.room("alice-1", "alice") == 3  # a new request replaces the client's own reservations
    assert pending.room("alice-2", "alice") == 1  # another client id of the same user shares the cap
    with pytest.raises(ReservationLimitError, match="2 are reserved under its other client ids"):
        pending.check_count(2, "alice-2", owner="alice")
    assert pending.room("bob", "bob") == 3


