"""A set of points that changes one member at a time and answers nearest-member queries quickly.

:class:`DynamicNearest` is the shared engine of the two indexes a server keeps between requests: the
labelled and reserved centres of incremental farthest point sampling (:mod:`ss_stylegan.selection.incremental`) and
the labelled points of 1-nearest-neighbour classification (:mod:`ss_stylegan.classification.nearest`).

Members are rows of a fixed coordinate table ``X`` ``[N, D]`` (the slice map). The set is a k-d tree
built over the members at one moment, plus the rows added since (searched by brute force) and the tree
rows removed since (skipped when they come up as neighbours). When more than ``rebuild_after`` rows
were added or removed since the tree was built (or more than ``_DEAD_LIMIT`` removed), the next query
rebuilds it, so a change costs O(1)
and a query O(M log L + M * rebuild_after) for M query points and L members, with one rebuild
(O(L log L)) amortised over ``rebuild_after`` changes (a large query rebuilds sooner, see
``_BRUTE_FORCE_LIMIT``).

Not thread-safe by itself: the owning index holds its own lock around every call.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

REBUILD_AFTER = 2048
"""Default number of changes after which the k-d tree is rebuilt (see the module docstring)."""

_DEAD_LIMIT = 64
"""Removed tree rows tolerated before a rebuild: a query asks the tree for this many extra neighbours."""

_BRUTE_FORCE_LIMIT = 1 << 22
"""A query whose brute-force part (query points x changes since the build) would exceed this many distances
rebuilds the tree first (e.g. one over every point of the map right after many centres were added)."""


class DynamicNearest:
    """Nearest member of a changing subset of the rows of ``X``.

    Args:
        X: coordinates of every row that can ever be a member, ``[N, D]`` (kept by reference).
        rebuild_after: changes (additions + removals) since the last k-d tree build that trigger a rebuild.

    The members are a set: adding a member twice or removing a non-member does nothing.
    """

    def __init__(self, X: np.ndarray, rebuild_after: int = REBUILD_AFTER) -> None:
        if rebuild_after < 1:
            raise ValueError(f"rebuild_after must be >= 1, got {rebuild_after}")
        self.X = X
        self.rebuild_after = int(rebuild_after)
        self.member = np.zeros(X.shape[0], dtype=bool)
        self._tree: cKDTree | None = None
        self._tree_rows = np.zeros(0, dtype=np.int64)
        self._n_dead = 0               # tree rows that are no longer members
        self._fresh: dict[int, None] = {}   # rows added since the build (insertion-ordered set)
        self._outdated = False               # too many changes: the next query rebuilds the tree
        self._n_members = 0
        self.n_rebuilds = 0

    def __len__(self) -> int:
        return self._n_members

    def add(self, rows: np.ndarray) -> None:
        """Make ``rows`` (``int64 [K]``) members."""
        rows = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
        rows = rows[~self.member[rows]]
        self.member[rows] = True
        self._n_members += len(rows)
        in_tree = self._in_tree(rows)
        self._n_dead -= int(in_tree.sum())          # tree rows that come back are live again
        self._note_fresh(rows[~in_tree], add=True)

    def remove(self, rows: np.ndarray) -> None:
        """Make ``rows`` (``int64 [K]``) non-members."""
        rows = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
        rows = rows[self.member[rows]]
        self.member[rows] = False
        self._n_members -= len(rows)
        in_tree = self._in_tree(rows)
        self._n_dead += int(in_tree.sum())
        self._note_fresh(rows[~in_tree], add=False)

    def _note_fresh(self, rows: np.ndarray, add: bool) -> None:
        if self._outdated:
            return
        for row in rows.tolist():
            if add:
                self._fresh[row] = None
            else:
                del self._fresh[row]
        if self._n_dead + len(self._fresh) > self.rebuild_after or self._n_dead > _DEAD_LIMIT:
            self._outdated = True           # rebuilt by the next query; until then nothing to track
            self._fresh = {}

    def query(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance to, and row of, the nearest member of every query point ``Q`` ``[M, D]``.

        Returns:
            ``(distance float64 [M], row int64 [M])``; ``(inf, -1)`` everywhere when there are no members.
        """
        Q = np.asarray(Q, dtype=np.float64).reshape(-1, self.X.shape[1])
        changes = self._n_dead + len(self._fresh)
        if self._outdated or Q.shape[0] * changes > _BRUTE_FORCE_LIMIT:
            self._rebuild()
        dist = np.full(Q.shape[0], np.inf)
        row = np.full(Q.shape[0], -1, dtype=np.int64)
        if Q.shape[0] == 0:
            return dist, row
        n_live_tree = len(self._tree_rows) - self._n_dead
        if self._tree is not None and n_live_tree > 0:
            k = min(len(self._tree_rows), 1 + self._n_dead)
            d, i = self._tree.query(Q, k=k)
            d, i = d.reshape(Q.shape[0], k), i.reshape(Q.shape[0], k)
            cand = self._tree_rows[i]
            live = self.member[cand]
            first = np.argmax(live, axis=1)         # the nearest tree row that is still a member
            rows_q = np.arange(Q.shape[0])
            dist, row = d[rows_q, first], cand[rows_q, first]
        if self._fresh:
            fresh = np.fromiter(self._fresh, dtype=np.int64, count=len(self._fresh))
            d_fresh = _distances(Q, self.X[fresh])
            best = np.argmin(d_fresh, axis=1)
            d_best = d_fresh[np.arange(Q.shape[0]), best]
            closer = d_best < dist
            dist = np.where(closer, d_best, dist)
            row = np.where(closer, fresh[best], row)
        return dist, row

    def _in_tree(self, rows: np.ndarray) -> np.ndarray:
        i = np.minimum(np.searchsorted(self._tree_rows, rows), max(len(self._tree_rows) - 1, 0))
        return self._tree_rows[i] == rows if len(self._tree_rows) else np.zeros(len(rows), dtype=bool)

    def _rebuild(self) -> None:
        self._tree_rows = np.flatnonzero(self.member)
        self._tree = cKDTree(self.X[self._tree_rows]) if len(self._tree_rows) else None
        self._n_dead = 0
        self._fresh = {}
        self._outdated = False
        self.n_rebuilds += 1


def _distances(Q: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[M, K]`` between ``Q`` ``[M, D]`` and ``P`` ``[K, D]``, summed dimension by dimension."""
    acc = np.zeros((Q.shape[0], P.shape[0]))
    for j in range(Q.shape[1]):
        diff = Q[:, j, None] - P[None, :, j]
        acc += diff * diff
    return np.sqrt(acc)
