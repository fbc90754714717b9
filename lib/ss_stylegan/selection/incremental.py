"""Farthest point sampling that keeps its state between calls, for a server with many annotators.

:class:`SuggestionIndex` holds the slice map and, for every point, its distance to the nearest *centre*
(a labelled or reserved slice). Changes of the centres update that array instead of recomputing it:

* adding a centre can only lower distances, and only of points nearer to it than to their own centre;
* removing a centre (a label deleted, a reservation released or expired, a study removed) can only raise
  the distances of the points whose nearest centre it was;
* a pick is the available point with the largest distance (lowest index on ties), and becomes a centre.

The points are stored in spatially compact blocks (sort-tile-recursive tiling of the first two
coordinates), each with its bounding box. A change marks the blocks it can affect as *stale* and gives
each an upper bound on its distances (from the box and a centre: no point of a box is farther from a
centre than the box's far corner); a pick recomputes exactly only the stale blocks whose bound reaches
the best exact distance so far, against the few centres that can be nearest to each block (with more than
``_TREE_CENTRES`` centres, found through a k-d tree of the centres, :class:`~ss_stylegan.classification.dynamic_nearest.DynamicNearest`,
so that thousands of labelled slices do not make every pick measure every centre). So one change costs
O(N / block) vector work plus the few blocks near the answer, never more than O(N), and nothing is ever
rebuilt but that tree (every ``_TREE_REBUILD_AFTER`` changes of the centres, O(L log L)).

The answer is exactly that of :class:`~ss_stylegan.selection.fps.FarthestPointSelector` over the same
labelled, pending and excluded points (same picks, same distances, same tie-breaking, same first pick);
the tests check this over random sequences of changes. Distances are summed dimension by dimension in
float64; on a 2-D map (the t-SNE map) they are bitwise those of the from-scratch selector, in more
dimensions they can differ in the last bit (and a pick only on such a tie).

After each ``select`` a background thread makes exact what the next pick will need (:meth:`SuggestionIndex.warm`),
so that work is done between requests rather than in the next one.

Thread-safe: one lock guards every public method. A server that reserves the picks in a separate structure must
still hold its own lock across ``select`` and that reservation (as it does with the stateless selector), or a
second request could be synchronised before the first one's picks are reserved
(:class:`~ss_stylegan.labelling.fair_lock.FairLock` serves waiters in order).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import numpy as np

from ss_stylegan.selection.blocks import _NO_ROWS, _Blocks
from ss_stylegan.selection.fps import (
    DEFAULT_START,
    STARTS,
    Pick,
    SelectionError,
    _as_indices,
    _check_count,
    _check_points,
    _first_fps_pick,
    _first_pick,
    _fps_pick,
)

BLOCK_SIZE = 128
"""Points per block: small enough that the bounds are tight and little is recomputed near a change, large
enough that the per-block bookkeeping (N / BLOCK_SIZE boxes) stays cheap."""


class SuggestionIndex:
    """Incremental farthest point sampling over a fixed map ``X`` ``[N, D]`` (the 2-D t-SNE map).

    Args:
        X: points ``[N, D]``; copied as float64.
        start: the first pick when there is no centre (``"random"``, ``"central"``, ``"farthest"``;
            see :mod:`ss_stylegan.selection`).
        random_state: seed of the ``"random"`` start.
        block_size: points per block (see the module docstring); any value >= 1 gives the same picks.
        busy: says whether a request is waiting for the server's lock; the warm-up after a select is skipped then
            (the waiting request does that work itself, and warms after its own select).

    Usage by a server, once per published map (build a new one when the map changes)::

        index = SuggestionIndex(slice_map.xy, start="central", random_state=0)
        with server_lock:                       # a FairLock that also covers the reservation below
            picks = index.select(labelled=rows, pending=reserved_by_others, count=n, exclude=removed_rows)
            reserve(client, picks)

    ``select`` first brings the index to the given sets (only what changed since the last call is
    applied), then picks; the picks become centres at once, and stay centres when the next call lists
    them as pending (reserved), or stop being centres when it does not. Comparing the given sets with the
    kept ones costs O(L) for L labelled, pending and excluded indices, not O(N).
    """

    def __init__(
        self,
        X: np.ndarray,
        start: str = DEFAULT_START,
        random_state: int | None = 0,
        block_size: int = BLOCK_SIZE,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        if start not in STARTS:
            raise SelectionError(f"start must be one of {STARTS}, got {start!r}")
        if int(block_size) != block_size or block_size < 1:
            raise SelectionError(f"block_size must be a positive integer, got {block_size!r}")
        X = _check_points(X)
        self.start = start
        self.random_state = random_state
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        self.n = self.X.shape[0]
        self._lock = threading.RLock()
        self._warming = False                                              # a warm-up thread is on its way
        self.warm_up = True                                                # warm up after each select
        self.busy = busy                                                   # another request is waiting: no warm-up
        self._centre_rows = _NO_ROWS                                       # sorted, unique
        self._is_centre = np.zeros(self.n, dtype=bool)
        self._excluded = np.zeros(self.n, dtype=bool)
        self._excluded_rows = _NO_ROWS                                     # sorted, unique
        self._blocks = _Blocks(self.X, int(block_size))

    # ------------------------------------------------------------------ public
    @property
    def n_centres(self) -> int:
        """Labelled and pending points (not excluded) the picks keep away from."""
        return len(self._centre_rows)

    @property
    def n_available(self) -> int:
        """Points that can still be picked."""
        with self._lock:
            return int(np.count_nonzero(~self._is_centre & ~self._excluded))

    def select(
        self,
        labelled: Iterable[int] = (),
        pending: Iterable[int] = (),
        count: int = 1,
        exclude: Iterable[int] = (),
    ) -> list[Pick]:
        """Pick up to ``count`` points as :meth:`FarthestPointSelector.select` would, from the kept state.

        Same arguments and answer as :meth:`ss_stylegan.selection.fps.FarthestPointSelector.select` with this
        index's ``start`` and ``random_state``. The picks are centres afterwards (see the class docstring).
        """
        with self._lock:
            count = _check_count(count)
            self.update(labelled, pending, exclude)
            picks = self.pick(count)
        if picks and self.warm_up:
            self._warm_in_background()
        return picks

    def warm(self) -> None:
        """Do now what the next pick would do first: make exact the distances of the blocks that the last picks
        made stale (those that can hold the farthest point). It changes no answer, only when the work is done:
        after a request instead of in the next one, which an annotator labelling a slice leaves seconds for.
        (Labelling a reserved slice keeps the centres as they are, so the warm-up is what the next pick needs.)"""
        with self._lock:
            if len(self._centre_rows):
                centres = self._centre_array()
                self._blocks.farthest(centres, self.X[centres])

    def _warm_in_background(self) -> None:
        with self._lock:
            if self._warming:
                return
            self._warming = True
        threading.Thread(target=self._background_warm, name="ss_stylegan-fps-warm", daemon=True).start()

    def _background_warm(self) -> None:
        try:
            if self.busy is None or not self.busy():   # a waiting request does this work itself, then warms
                self.warm()
        finally:
            self._warming = False

    def update(self, labelled: Iterable[int] = (), pending: Iterable[int] = (), exclude: Iterable[int] = ()) -> None:
        """Make the centres exactly ``(labelled | pending) - exclude`` and the unavailable points ``exclude``;
        only the differences from the kept state are applied."""
        with self._lock:
            excluded = np.unique(_as_indices(exclude, self.n, "exclude"))
            target = np.union1d(_as_indices(labelled, self.n, "labelled"), _as_indices(pending, self.n, "pending"))
            moved = _NO_ROWS
            if not np.array_equal(excluded, self._excluded_rows):
                moved = np.setxor1d(excluded, self._excluded_rows, assume_unique=True)
                self._excluded[self._excluded_rows] = False
                self._excluded[excluded] = True
                self._excluded_rows = excluded
            target = target[~self._excluded[target]]
            removed = np.setdiff1d(self._centre_rows, target, assume_unique=True)
            added = np.setdiff1d(target, self._centre_rows, assume_unique=True)
            self._remove_centres(removed)
            self._add_centres(added)
            self._refresh_available(np.concatenate([moved, removed, added]))

    def pick(self, count: int = 1) -> list[Pick]:
        """Pick up to ``count`` points from the kept state; each pick becomes a centre."""
        with self._lock:
            count = _check_count(count)
            picks: list[Pick] = []
            while len(picks) < count:
                if not len(self._centre_rows):
                    available = ~self._is_centre & ~self._excluded
                    if not available.any():
                        break
                    index = _first_pick(self.X, available, self.start, self.random_state)
                    pick = _first_fps_pick(index, self.start)
                else:
                    centres = self._centre_array()
                    found = self._blocks.farthest(centres, self.X[centres])
                    if found is None:
                        break
                    index, distance = found
                    pick = _fps_pick(index, distance)
                self._add_centre(index)
                self._refresh_available(np.array([index]))
                picks.append(pick)
            return picks

    def distances(self) -> np.ndarray:
        """Every point's distance to its nearest centre, ``float64 [N]`` (``inf`` without centres). O(N)."""
        with self._lock:
            centres = self._centre_array()
            return self._blocks.min_distances(centres, self.X[centres])

    # ------------------------------------------------------------------ internals
    def _centre_array(self) -> np.ndarray:
        return self._centre_rows

    def _refresh_available(self, rows: np.ndarray) -> None:
        self._blocks.set_available(rows, ~self._is_centre[rows] & ~self._excluded[rows])

    def _add_centre(self, row: int) -> None:
        self._add_centres(np.array([row], dtype=np.int64))

    def _add_centres(self, rows: np.ndarray) -> None:
        """Add centres ``rows`` (sorted, unique, none a centre now)."""
        if rows.size == 0:
            return
        self._centre_rows = np.union1d(self._centre_rows, rows)
        self._is_centre[rows] = True
        self._blocks.nearest_centre.add(rows)
        for row in rows.tolist():
            self._blocks.add_centre(row, self.X[row])

    def _remove_centres(self, rows: np.ndarray) -> None:
        """Remove centres ``rows`` (sorted, unique, all centres now)."""
        if rows.size == 0:
            return
        self._centre_rows = np.setdiff1d(self._centre_rows, rows, assume_unique=True)
        self._is_centre[rows] = False
        self._blocks.nearest_centre.remove(rows)
        remaining = self._centre_array()
        self._blocks.remove_centres(rows, remaining, self.X[remaining])
