"""The spatial blocks behind :class:`~ss_stylegan.selection.incremental.SuggestionIndex`.

The points are stored in compact blocks (sort-tile-recursive tiling of the first two coordinates), each
with its bounding box and an upper bound on its points' distances to the nearest centre. A change of the
centres marks the blocks it can affect as stale; a pick measures exactly only the stale blocks whose bound
reaches the best exact distance so far, against the centres that can be nearest to them (directly, all at
once, in groups, or through a k-d tree of the centres when there are many: the module constants choose).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist

from ss_stylegan.classification.dynamic_nearest import DynamicNearest


class _Blocks:
    """The points in spatially compact blocks with each point's nearest-centre distance and centre.

    Arrays ``[n_blocks, block]`` are in block order; ``pos_row`` maps a position to its row of ``X``
    and ``row_pos`` back. The last block is padded with copies of its last point (never available, so
    never picked; their distances equal that point's, so no block maximum changes).

    A block is *exact* or *stale*. For an exact block ``min_dist`` / ``nearest`` are every point's
    distance to, and row of, its nearest centre; ``max_dist`` is their maximum and ``max_key`` the
    maximum over its available points (``-inf`` when none). A stale block keeps the values of its last
    exact moment and ``bound``, an upper bound on every one of its current distances, which came from
    centre ``bound_src`` (``-1``: from ``max_dist``, valid while every centre its points were nearest to
    then still exists). ``blocks_of[row]`` lists the blocks whose last exact ``nearest`` holds centre
    ``row`` (``centres_in[block]`` the reverse), so a removal finds them without a scan.
    """

    def __init__(self, X: np.ndarray, block: int) -> None:
        n, dim = X.shape
        self.block = block
        order = _tile_order(X, block)
        n_blocks = max(1, math.ceil(n / block))
        pad = n_blocks * block - n
        self.pos_row = np.concatenate([order, np.full(pad, order[-1] if n else 0, dtype=np.int64)])
        self.row_pos = np.empty(n, dtype=np.int64)
        self.row_pos[order] = np.arange(n)
        coords = X[self.pos_row] if n else np.zeros((n_blocks * block, dim))
        self.coords = [np.ascontiguousarray(coords[:, j]).reshape(n_blocks, block) for j in range(dim)]
        self.points = np.ascontiguousarray(coords).reshape(n_blocks, block, dim)
        self.lo = np.stack([c.min(axis=1) for c in self.coords], axis=1)     # [n_blocks, D]
        self.hi = np.stack([c.max(axis=1) for c in self.coords], axis=1)
        shape = (n_blocks, block)
        self.min_dist = np.full(shape, np.inf)
        self.nearest = np.full(shape, -1, dtype=np.int64)
        self.available = (np.arange(n_blocks * block) < n).reshape(shape)
        self.max_dist = np.full(n_blocks, np.inf)
        self.has_available = self.available.any(axis=1)
        self.max_key = np.where(self.has_available, np.inf, -np.inf)
        self.stale = np.zeros(n_blocks, dtype=bool)
        self.bound = np.full(n_blocks, np.inf)
        self.bound_src = np.full(n_blocks, -1, dtype=np.int64)
        self.blocks_of: dict[int, set[int]] = {}
        self.centres_in: list[np.ndarray] = [_NO_ROWS] * n_blocks
        # the centres again, as a k-d tree (rows of X; the owner keeps it in step): with many centres, the
        # nearest centre of a point or box comes from it instead of from measuring every centre
        self.nearest_centre = DynamicNearest(X, rebuild_after=_TREE_REBUILD_AFTER)

    # -- bounds from boxes -----------------------------------------------------------------------------
    def _box_near(self, x: np.ndarray, blocks: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Distance from ``x`` ``[D]`` to the boxes of ``blocks``: never above any of their points' distances."""
        gap = np.maximum(np.maximum(self.lo[blocks] - x, x - self.hi[blocks]), 0.0)
        return np.sqrt(_sum_squares(gap))

    def _box_far(self, x: np.ndarray, blocks: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Distance from ``x`` ``[D]`` to the far corner of the boxes: never below any of their points' distances."""
        reach = np.maximum(np.abs(x - self.lo[blocks]), np.abs(x - self.hi[blocks]))
        return np.sqrt(_sum_squares(reach))

    def _box_to_centres(self, blocks: np.ndarray, centre_xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_box_near` and :meth:`_box_far` of every block for every centre: ``[m, L]`` each."""
        lo, hi, c = self.lo[blocks][:, None, :], self.hi[blocks][:, None, :], centre_xs[None, :, :]
        near = np.sqrt(_sum_squares(np.maximum(np.maximum(lo - c, c - hi), 0.0)))
        far = np.sqrt(_sum_squares(np.maximum(np.abs(c - lo), np.abs(c - hi))))
        return near, far

    # -- changes -------------------------------------------------------------------------------------------
    def add_centre(self, row: int, x: np.ndarray) -> None:
        """A new centre ``row`` at ``x``: the blocks it may bring nearer become stale with a tighter bound."""
        limit = np.where(self.stale, self.bound, self.max_dist)
        blocks = np.flatnonzero(self._box_near(x) < limit)
        if blocks.size == 0:
            return
        far = self._box_far(x, blocks)
        old = limit[blocks]
        tighter = far < old
        self.bound[blocks] = np.where(tighter, far, old)
        self.bound_src[blocks] = np.where(tighter, row, np.where(self.stale[blocks], self.bound_src[blocks], -1))
        self.stale[blocks] = True

    def remove_centres(self, rows: np.ndarray, centres: np.ndarray, centre_xs: np.ndarray) -> None:
        """Removed centres ``rows``; ``centres`` (at ``centre_xs`` ``[L, D]``) are the remaining ones.

        Blocks that had a point nearest to a removed centre, and stale blocks whose bound came from one,
        get a new bound from the remaining centres.
        """
        touched = np.isin(self.bound_src, rows) & self.stale
        for row in rows.tolist():
            touched[list(self.blocks_of.pop(row, ()))] = True
        blocks = np.flatnonzero(touched)
        if blocks.size == 0:
            return
        if len(centres) == 0:
            self.bound[blocks], self.bound_src[blocks] = np.inf, -1
        elif len(centres) > _TREE_CENTRES:      # the far corner from the centre nearest the box's middle
            _, nearest = self.nearest_centre.query((self.lo[blocks] + self.hi[blocks]) / 2.0)
            x = self.nearest_centre.X[nearest]
            reach = np.maximum(np.abs(x - self.lo[blocks]), np.abs(x - self.hi[blocks]))
            self.bound[blocks] = np.sqrt(_sum_squares(reach))     # as _box_far: no point of the box is farther
            self.bound_src[blocks] = nearest
        else:
            for part in _chunks(blocks, len(centres)):
                _, far = self._box_to_centres(part, centre_xs)
                best = np.argmin(far, axis=1)
                self.bound[part] = far[np.arange(len(part)), best]
                self.bound_src[part] = centres[best]
        self.stale[blocks] = True

    def set_available(self, rows: np.ndarray, available: np.ndarray) -> None:
        """Availability of ``rows`` (``bool [K]``)."""
        if rows.size == 0:
            return
        b, i = np.divmod(self.row_pos[rows], self.block)
        self.available[b, i] = available
        blocks = np.unique(b)
        self.has_available[blocks] = self.available[blocks].any(axis=1)
        self._refresh_keys(blocks)

    def _refresh_keys(self, blocks: np.ndarray) -> None:
        keys = np.where(self.available[blocks], self.min_dist[blocks], -np.inf)
        self.max_key[blocks] = keys.max(axis=1)

    # -- exact recomputation ----------------------------------------------------------------------------
    def _make_exact(self, blocks: np.ndarray, centres: np.ndarray, centre_xs: np.ndarray) -> None:
        if blocks.size == 0:
            return
        if len(centres) == 0:
            self.min_dist[blocks], self.nearest[blocks] = np.inf, -1
        else:
            for part in _chunks(blocks, len(centres)):
                self.min_dist[part], self.nearest[part] = self._nearest_in_blocks(part, centres, centre_xs)
        self.max_dist[blocks] = self.min_dist[blocks].max(axis=1)
        self._refresh_keys(blocks)
        self.stale[blocks] = False
        self.bound_src[blocks] = -1
        self._index_nearest(blocks)

    def _index_nearest(self, blocks: np.ndarray) -> None:
        """Record, for every centre, the blocks in which it is the nearest centre of some point."""
        for b in blocks.tolist():
            for row in self.centres_in[b].tolist():
                self.blocks_of.get(row, set()).discard(b)
        width = np.int64(len(self.row_pos) + 1)
        keys = np.unique(blocks[:, None] * width + (self.nearest[blocks] + 1))     # (block, nearest + 1)
        owner, rows = np.divmod(keys, width)
        real = rows > 0
        owner, rows = owner[real], rows[real] - 1
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]) if len(owner) else np.zeros(0, np.int64)
        for b in blocks.tolist():
            self.centres_in[b] = _NO_ROWS
        for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(owner)]):
            b = int(owner[start])
            self.centres_in[b] = rows[start:end]
            for row in rows[start:end].tolist():
                self.blocks_of.setdefault(row, set()).add(b)

    def _nearest_in_blocks(self, blocks: np.ndarray, centres: np.ndarray,
                           centre_xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance to, and row of, the nearest centre of every point of ``blocks``: ``[m, block]`` each
        (the lowest row among equally near centres).

        Few blocks and centres are measured all against all. Otherwise only candidate centres are: q is a
        candidate for a block when its distance to the box is at most the smallest far-corner distance of
        any centre (every point has a centre that near). When the candidates of all the blocks together are
        few (a pick cleans a few blocks at a time, and each has a handful), every point is measured against
        all of them at once. Otherwise blocks are grouped by their number of candidates (rounded up to a
        power of two, padded with repeats), so a block with one candidate costs one distance per point.
        """
        if len(blocks) * self.block * len(centres) <= _DIRECT_PAIRS:              # few: measure every centre
            return self._measure(blocks, centres, centre_xs)
        if len(centres) > _TREE_CENTRES:                                            # many: ask the k-d tree
            dist, nearest = self.nearest_centre.query(self.points[blocks].reshape(-1, self.points.shape[2]))
            return dist.reshape(len(blocks), self.block), nearest.reshape(len(blocks), self.block)
        near, far = self._box_to_centres(blocks, centre_xs)                          # [m, L]
        candidate = near <= far.min(axis=1, keepdims=True)
        used = np.flatnonzero(candidate.any(axis=0))                                 # sorted positions
        if len(blocks) * self.block * len(used) <= _UNION_PAIRS:                     # one call for all blocks
            return self._measure(blocks, centres[used], centre_xs[used])
        n_cand = candidate.sum(axis=1)
        order = np.argsort(~candidate, axis=1, kind="stable")                        # candidates first
        dist = np.empty((len(blocks), self.block))
        nearest = np.empty((len(blocks), self.block), dtype=np.int64)
        width = 2 ** np.ceil(np.log2(n_cand)).astype(np.int64)
        for k in np.unique(width).tolist():
            group = np.flatnonzero(width == k)
            slots = np.minimum(np.arange(k)[None, :], n_cand[group, None] - 1)     # repeat the last candidate
            cand = np.take_along_axis(order[group], slots, axis=1)                 # [g, k] centre positions
            acc = np.zeros((k, len(group), self.block))                           # candidates first
            for j, coord in enumerate(self.coords):
                diff = coord[blocks[group]][None] - centre_xs[cand.T, j][:, :, None]
                acc += diff * diff
            best = np.argmin(acc, axis=0)                                          # [g, block]
            dist[group] = np.sqrt(acc.min(axis=0))
            nearest[group] = centres[np.take_along_axis(cand, best, axis=1)]
        return dist, nearest

    def _measure(self, blocks: np.ndarray, centres: np.ndarray,
                 centre_xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every point of ``blocks`` against every one of ``centres``: nearest distance and row, ``[m, block]``
        each (the first, so lowest, of equally near centres: ``centres`` are sorted)."""
        points = self.points[blocks].reshape(-1, self.points.shape[2])
        sq = cdist(points, centre_xs, "sqeuclidean")        # summed dimension by dimension, like _sum_squares
        best = np.argmin(sq, axis=1)
        dist = np.sqrt(sq[np.arange(len(points)), best])
        return dist.reshape(len(blocks), self.block), centres[best].reshape(len(blocks), self.block)

    # -- answers -----------------------------------------------------------------------------------------
    def farthest(self, centres: np.ndarray, centre_xs: np.ndarray) -> tuple[int, float] | None:
        """``(row, distance)`` of the available point farthest from every centre, lowest row on ties.

        Stale blocks whose bound reaches the best exact maximum are made exact first (they could hold a
        farther point, or an equally far one with a lower row), the highest bounds first and a few at a
        time, so that the best maximum rises quickly and fewer blocks remain within reach.
        """
        while True:
            best = np.max(self.max_key, where=~self.stale, initial=-np.inf)
            reach = np.flatnonzero(self.stale & self.has_available & (self.bound >= best))
            if reach.size == 0:
                break
            if reach.size > _CLEAN_AT_ONCE:
                reach = reach[np.argpartition(-self.bound[reach], _CLEAN_AT_ONCE)[:_CLEAN_AT_ONCE]]
            self._make_exact(reach, centres, centre_xs)
        if best == -np.inf:
            return None
        blocks = np.flatnonzero((self.max_key == best) & ~self.stale)
        keys = np.where(self.available[blocks], self.min_dist[blocks], -np.inf)
        b, i = np.nonzero(keys == best)
        rows = self.pos_row[blocks[b] * self.block + i]
        return int(rows.min()), float(best)

    def min_distances(self, centres: np.ndarray, centre_xs: np.ndarray) -> np.ndarray:
        """Every row's distance to its nearest centre (makes every block exact)."""
        self._make_exact(np.flatnonzero(self.stale), centres, centre_xs)
        return self.min_dist.reshape(-1)[self.row_pos]


_NO_ROWS = np.zeros(0, dtype=np.int64)

_CLEAN_AT_ONCE = 8
"""Stale blocks made exact per round of :meth:`_Blocks.farthest`."""

_DIRECT_PAIRS = 65536
"""Up to this many point-centre pairs, :meth:`_Blocks._nearest_in_blocks` measures every centre."""

_UNION_PAIRS = 1 << 17
"""Up to this many point-candidate pairs, :meth:`_Blocks._nearest_in_blocks` measures every point of the
blocks against the candidates of any of them in one call (a few hundred microseconds), instead of grouping
the blocks by their candidates (about a millisecond of per-group steps, whatever the size)."""

_TREE_CENTRES = 256
"""Above this many centres, nearest centres come from the k-d tree of centres (:class:`DynamicNearest`):
measuring every block against every centre's box costs O(blocks x centres), 20 ms per pick at 10,000
labelled slices; the tree answers a block's points in O(block x log centres)."""

_TREE_REBUILD_AFTER = 64
"""Centres added or removed after which the tree is rebuilt (until then they are measured one by one)."""

_CHUNK_PAIRS = 1 << 20
"""Block-centre pairs measured at once (bounds memory when thousands of slices are labelled)."""


def _chunks(blocks: np.ndarray, n_centres: int) -> list[np.ndarray]:
    """``blocks`` cut into parts of at most ``_CHUNK_PAIRS // n_centres`` blocks."""
    size = max(1, _CHUNK_PAIRS // max(n_centres, 1))
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def _sum_squares(a: np.ndarray) -> np.ndarray:
    """Sum of squares over the last axis, accumulated dimension by dimension (the order every distance here uses)."""
    acc = np.zeros(a.shape[:-1])
    for j in range(a.shape[-1]):
        acc += a[..., j] * a[..., j]
    return acc


def _tile_order(X: np.ndarray, block: int) -> np.ndarray:
    """Rows of ``X`` in sort-tile-recursive order: vertical strips by the first coordinate, each sorted by
    the second, cut into blocks of ``block`` consecutive rows (so each block is a compact tile).

    Which tile a point lands in never changes a pick, so ties may go either way: the unstable sort is three
    times faster than the stable one (90 ms instead of 280 ms at a million points), and an index is built on
    every new map, by the request that first meets it, while every other suggestion waits."""
    n = X.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    by_x = np.argsort(X[:, 0])
    if X.shape[1] < 2:
        return by_x
    n_blocks = math.ceil(n / block)
    per_strip = math.ceil(n_blocks / max(1, math.ceil(math.sqrt(n_blocks)))) * block
    strips = [by_x[s : s + per_strip] for s in range(0, n, per_strip)]
    return np.concatenate([s[np.argsort(X[s, 1])] for s in strips])
