"""The incremental FPS index answers exactly as a from-scratch FarthestPointSelector over random change sequences."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ss_stylegan.classification.dynamic_nearest import DynamicNearest
from ss_stylegan.labelling.fair_lock import FairLock
from ss_stylegan.selection.fps import FarthestPointSelector, SelectionError
from ss_stylegan.selection.incremental import SuggestionIndex


def _map(n: int, dim: int, seed: int) -> np.ndarray:
    """Gaussian blobs with exact duplicates and a grid of equal coordinates (ties), ``[n, dim]``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=30.0, size=(8, dim))
    X = centres[rng.integers(0, 8, n)] + rng.normal(size=(n, dim))
    X[: n // 10] = X[n // 10 : 2 * (n // 10)]                 # exact duplicates
    X[-n // 10 :] = np.round(X[-n // 10 :])                   # many equal coordinates
    return X


def _random_ops(n: int, rng: np.random.Generator, steps: int):
    """A random sequence of server-like states: labels come and go, clients reserve and release, studies leave."""
    labelled: set[int] = set()
    pending: set[int] = set()
    excluded: set[int] = set()
    for _ in range(steps):
        op = rng.integers(0, 6)
        if op == 0:
            labelled |= set(rng.integers(0, n, rng.integers(1, 4)).tolist())
        elif op == 1 and labelled:
            labelled -= set(rng.choice(sorted(labelled), min(len(labelled), rng.integers(1, 3)), replace=False).tolist())
        elif op == 2:
            pending = set(rng.integers(0, n, rng.integers(0, 6)).tolist())
        elif op == 3:
            start = int(rng.integers(0, n - 20))
            excluded = set(range(start, start + 20)) if rng.random() < 0.7 else set()
        elif op == 4:
            labelled = set()
        yield sorted(labelled), sorted(pending), sorted(excluded), int(rng.integers(0, 4))


@pytest.mark.parametrize("start", ["random", "central", "farthest"])
@pytest.mark.parametrize("block_size", [1, 7, 64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_picks_equal_from_scratch_fps_over_random_changes(start: str, block_size: int, seed: int) -> None:
    X = _map(400, 2, seed)
    rng = np.random.default_rng(100 + seed)
    index = SuggestionIndex(X, start=start, random_state=seed, block_size=block_size, )
    scratch = FarthestPointSelector(start=start, random_state=seed)
    n_picks = 0
    for labelled, pending, excluded, count in _random_ops(len(X), rng, 60):
        got = index.select(labelled=labelled, pending=pending, count=count, exclude=excluded)
        want = scratch.select(X, labelled=labelled, pending=pending, count=count, exclude=excluded)
        assert got == want          # same indices, bitwise-equal distances, same reasons
        n_picks += len(got)
        # the kept distances equal a fresh computation over the same centres (picks included)
        centres = sorted((set(labelled) | set(pending) | {p.index for p in got}) - set(excluded))
        if centres:
            fresh = np.sqrt(((X[:, None, :] - X[None, centres, :]) ** 2).sum(axis=2)).min(axis=1)
            np.testing.assert_array_equal(index.distances(), fresh)
    assert n_picks > 40


@pytest.mark.parametrize("seed", [0, 1])
def test_a_warm_up_between_requests_leaves_the_next_pick_nothing_to_measure_and_changes_no_answer(seed: int) -> None:
    """What :meth:`SuggestionIndex.warm` (run in the background after each select) does: afterwards no stale block
    can hold the farthest point, so the next pick on the same centres measures nothing; the picks stay exactly the
    from-scratch selector's."""
    X = _map(2000, 2, seed)
    rng = np.random.default_rng(200 + seed)
    index = SuggestionIndex(X, start="central", random_state=seed, block_size=16)
    index.warm_up = False   # warmed here, by hand, so the test sees each state
    scratch = FarthestPointSelector(start="central", random_state=seed)
    for labelled, pending, excluded, count in _random_ops(len(X), rng, 40):
        got = index.select(labelled=labelled, pending=pending, count=count, exclude=excluded)
        assert got == scratch.select(X, labelled=labelled, pending=pending, count=count, exclude=excluded)
        index.warm()
        if not index.n_centres:
            continue   # nothing labelled, reserved or picked: the next pick is the first one, measured from nothing
        blocks = index._blocks
        best = np.max(blocks.max_key, where=~blocks.stale, initial=-np.inf)
        assert not np.any(blocks.stale & blocks.has_available & (blocks.bound >= best))


def test_the_background_warm_up_runs_after_a_select_and_gives_way_to_a_waiting_request() -> None:
    X = _map(4000, 2, 3)

    def stale_in_reach(index: SuggestionIndex) -> bool:
        blocks = index._blocks
        best = np.max(blocks.max_key, where=~blocks.stale, initial=-np.inf)
        return bool(np.any(blocks.stale & blocks.has_available & (blocks.bound >= best)))

    for waiting in (False, True):
        index = SuggestionIndex(X, start="central", random_state=0, block_size=16, busy=lambda: waiting)
        index.select(labelled=[1, 2, 3], count=1)
        deadline = time.monotonic() + 30
        while index._warming and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stale_in_reach(index) == waiting   # warmed unless a request waits (it would do that work itself)


@pytest.mark.parametrize("path", ["direct", "union", "groups", "tree", "tree rebuilt often"])
def test_every_way_of_measuring_blocks_gives_the_same_picks(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks made exact are measured against every centre (few pairs), against the candidates of all of them
    at once, in groups by number of candidates, or through the k-d tree of centres (many centres; its bounds
    for blocks whose nearest centre was removed too): each way alone gives the from-scratch picks and
    distances, with centres added and removed between the tree's rebuilds."""
    import ss_stylegan.selection.blocks as blocks

    monkeypatch.setattr(blocks, "_DIRECT_PAIRS", 1 << 40 if path == "direct" else 0)
    monkeypatch.setattr(blocks, "_UNION_PAIRS", 1 << 40 if path == "union" else 0)
    monkeypatch.setattr(blocks, "_TREE_CENTRES", 0 if path.startswith("tree") else 1 << 40)
    monkeypatch.setattr(blocks, "_TREE_REBUILD_AFTER", 3 if path == "tree rebuilt often" else 64)
    X = _map(1500, 2, 11)
    rng = np.random.default_rng(11)
    index = SuggestionIndex(X, start="central", block_size=16)
    scratch = FarthestPointSelector(start="central")
    for labelled, pending, excluded, count in _random_ops(len(X), rng, 40):
        got = index.select(labelled=labelled, pending=pending, count=count + 2, exclude=excluded)
        assert got == scratch.select(X, labelled=labelled, pending=pending, count=count + 2, exclude=excluded)
        centres = sorted((set(labelled) | set(pending) | {p.index for p in got}) - set(excluded))
        fresh = np.sqrt(((X[:, None, :] - X[None, centres, :]) ** 2).sum(axis=2)).min(axis=1)
        np.testing.assert_array_equal(index.distances(), fresh)


def test_many_labelled_points_use_the_tree_and_give_the_same_picks() -> None:
    """Hundreds of labelled points (above ``_TREE_CENTRES``, with the default settings): picks, distances and
    the first pick on an index built afterwards equal the from-scratch selector while labels come and go."""
    import ss_stylegan.selection.blocks as blocks

    X = _map(6000, 2, 21)
    rng = np.random.default_rng(21)
    labelled = set(rng.choice(len(X), blocks._TREE_CENTRES + 200, replace=False).tolist())
    index = SuggestionIndex(X, start="central", block_size=32)
    scratch = FarthestPointSelector(start="central")
    pending: list[int] = []
    for step in range(30):
        if step % 3 == 2:                                       # labels removed: their blocks get tree bounds
            labelled -= set(rng.choice(sorted(labelled), 15, replace=False).tolist())
        excluded = list(range(100, 160)) if step % 5 == 4 else []
        got = index.select(labelled=sorted(labelled), pending=pending, count=3, exclude=excluded)
        assert got == scratch.select(X, labelled=sorted(labelled), pending=pending, count=3, exclude=excluded)
        labelled |= {p.index for p in got[:2]}                  # two labelled, one stays reserved
        pending = [got[2].index]
    assert index.n_centres > blocks._TREE_CENTRES and index._blocks.nearest_centre.n_rebuilds > 1
    fresh = SuggestionIndex(X, start="central", block_size=32)
    assert fresh.select(labelled=sorted(labelled), count=4) == scratch.select(X, labelled=sorted(labelled), count=4)


def test_picks_in_more_dimensions_match_to_rounding() -> None:
    X = _map(300, 3, 7)
    rng = np.random.default_rng(7)
    index = SuggestionIndex(X, start="central", block_size=16)
    scratch = FarthestPointSelector(start="central")
    for labelled, pending, excluded, count in _random_ops(len(X), rng, 40):
        got = index.select(labelled=labelled, pending=pending, count=count, exclude=excluded)
        want = scratch.select(X, labelled=labelled, pending=pending, count=count, exclude=excluded)
        assert [p.index for p in got] == [p.index for p in want]
        for a, b in zip(got, want):
            assert (a.distance is None and b.distance is None) or a.distance == pytest.approx(b.distance, rel=1e-12)


def test_exhausting_the_map_and_errors() -> None:
    X = _map(50, 2, 3)
    index = SuggestionIndex(X, block_size=8)
    picks = index.select(labelled=[0], exclude=[1, 2], count=100)
    assert len(picks) == 47 and len({p.index for p in picks}) == 47 and not {0, 1, 2} & {p.index for p in picks}
    assert index.pick(1) == [] and index.n_available == 0
    assert index.select(labelled=[0], exclude=[1, 2], count=0) == []       # the earlier picks are released
    assert index.n_available == 47 and index.n_centres == 1
    with pytest.raises(SelectionError, match="outside"):
        index.select(labelled=[50])
    with pytest.raises(SelectionError, match="count"):
        index.select(count=-1)
    with pytest.raises(SelectionError, match="start"):
        SuggestionIndex(X, start="middle")
    with pytest.raises(SelectionError, match="NaN"):
        SuggestionIndex(np.full((3, 2), np.nan))
    assert SuggestionIndex(np.zeros((0, 2))).select(count=3) == []


def test_concurrent_clients_never_get_the_same_point() -> None:
    """16 threads, each replacing its own reservation on every call (the server's pattern): no pick is
    handed to two clients at once and every pick is the farthest point at the moment it was made."""
    X = _map(3000, 2, 4)
    index = SuggestionIndex(X, block_size=32)
    lock = threading.Lock()
    reserved: dict[int, list[int]] = {}
    errors: list[str] = []

    def client(c: int) -> None:
        for _ in range(25):
            with lock:
                others = [r for k, rows in reserved.items() if k != c for r in rows]
                picks = index.select(labelled=list(range(10)), pending=others, count=2)
                rows = [p.index for p in picks]
                if set(rows) & set(others):
                    errors.append(f"client {c} got a point reserved by another client")
                reserved[c] = rows

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    held = [r for rows in reserved.values() for r in rows]
    assert len(held) == 32 == len(set(held))
    want = FarthestPointSelector(start="central").select(X, labelled=range(10), pending=held, count=3)
    assert index.select(labelled=range(10), pending=held, count=3) == want


def test_dynamic_nearest_matches_brute_force_after_changes() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(500, 2))
    nearest = DynamicNearest(X, rebuild_after=7)
    members: set[int] = set()
    for _ in range(80):
        rows = rng.integers(0, 500, rng.integers(1, 6))
        if rng.random() < 0.6:
            nearest.add(rows)
            members |= set(rows.tolist())
        else:
            nearest.remove(rows)
            members -= set(rows.tolist())
        Q = rng.normal(size=(30, 2))
        dist, row = nearest.query(Q)
        assert len(nearest) == len(members)
        if not members:
            assert np.isinf(dist).all() and (row == -1).all()
            continue
        m = np.array(sorted(members))
        d = np.sqrt(((Q[:, None] - X[None, m]) ** 2).sum(axis=2))
        np.testing.assert_array_equal(dist, d.min(axis=1))
        np.testing.assert_array_equal(np.sqrt(((Q - X[row]) ** 2).sum(axis=1)), dist)   # the row is at that distance
    assert nearest.n_rebuilds > 3


def test_fair_lock_serves_waiters_in_arrival_order() -> None:
    lock = FairLock()
    order: list[int] = []
    inside = [0]
    lock.acquire()
    threads = []
    for k in range(6):
        def worker(k: int = k) -> None:
            with lock:
                inside[0] += 1
                assert inside[0] == 1          # mutual exclusion
                order.append(k)
                inside[0] -= 1
        t = threading.Thread(target=worker)
        t.start()
        while len(lock._waiters) < k + 1:     # wait until thread k queues, so arrival order is known
            threading.Event().wait(0.001)
        threads.append(t)
    lock.release()
    for t in threads:
        t.join()
    assert order == list(range(6))
    with pytest.raises(RuntimeError, match="unheld"):
        lock.release()
