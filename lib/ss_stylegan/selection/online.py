"""TypiClust and ProbCover for a server: one suggestion at a time, with state kept between calls.

The evaluation's selectors (:mod:`.typiclust`, :mod:`.probcover`) refit k-means or rebuild δ-balls on every call
over every point. A server with a million slices and many annotators cannot; these keep what does not depend on
the labels, built once per map over a :class:`~ss_stylegan.selection.feature_space.FeatureSpace`:

- :class:`TypiClustIndex` -- k-means of the anchors into :data:`LADDER` cluster counts (2, 3, 4, 5, 6, 8, ...
  up to 500, each about 25 % more than the last), and for each cluster its anchors, most typical first. A call
  counts the chosen slices (labelled and reserved; a slice that is not an anchor is in its nearest centre's
  cluster) per cluster at the smallest count of clusters that is at least the chosen plus the asked (TypiClust
  uses exactly that many: here up to 25 % more), and picks, from the largest cluster (in anchors, a uniform
  sample) holding fewest chosen slices, its most typical free anchor. Cost per call: O(chosen + clusters).
- :class:`CoverageIndex` -- ProbCover over the anchors: δ from the purity rule, each anchor's δ-ball (at most
  ``max_neighbours`` anchors), and the coverage of the chosen slices kept between calls (a labelled slice that
  is not an anchor covers the anchors of its δ-ball among its nearest anchors). A pick is the anchor whose ball
  covers most uncovered anchors. Changes of the chosen set cost their balls; a pick O(anchors).

Both work cold (nothing chosen) and warm, and give the same picks for the same chosen set, whatever came before.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans

from ss_stylegan.selection.feature_space import FeatureSpace, nearest_rows
from ss_stylegan.selection.probcover import purity_radius

LADDER = tuple(sorted({int(round(2 * 1.25 ** i)) for i in range(40) if 2 * 1.25 ** i <= 500.5}))


@dataclasses.dataclass(frozen=True)
class OnlinePick:
    """One pick: the map row (``index``, as :class:`~ss_stylegan.selection.fps.Pick` names it), and why."""

    index: int
    reason: str
    distance: float | None = None


class _Level:
    """One k-means clustering of the anchors: each anchor's cluster, cluster sizes (in anchors, a uniform sample of
    the slices) and each cluster's anchors, most typical first; any other slice is in its nearest centre's cluster."""

    def __init__(self, space: FeatureSpace, n_clusters: int, random_state: int) -> None:
        anchors = space.anchor_x
        k = max(1, min(n_clusters, len(anchors)))
        if k > 1:
            kmeans = KMeans(k, n_init=1, random_state=random_state, max_iter=100).fit(anchors)
            self.centres = kmeans.cluster_centers_.astype(np.float32)
            self.anchor_cluster = kmeans.labels_.astype(np.int32)
        else:
            self.centres = anchors.mean(axis=0, keepdims=True).astype(np.float32)
            self.anchor_cluster = np.zeros(len(anchors), dtype=np.int32)
        self.n_clusters = k
        self.sizes = np.bincount(self.anchor_cluster, minlength=k)
        order = np.lexsort((-space.typicality, self.anchor_cluster))     # by cluster, most typical first
        starts = np.searchsorted(self.anchor_cluster[order], np.arange(k))
        ends = np.append(starts[1:], len(order))
        self.by_typicality = [space.anchors[order[a:b]] for a, b in zip(starts, ends)]   # map rows
        self._cluster_of: dict[int, int] = {}
        self._space = space

    def clusters_of(self, rows: np.ndarray) -> np.ndarray:
        """The cluster of each map row (an anchor's own; another slice's nearest centre, kept once found)."""
        out = np.empty(len(rows), dtype=np.int64)
        anchor = self._space.anchor_of[rows]
        out[anchor >= 0] = self.anchor_cluster[anchor[anchor >= 0]]
        others = [int(r) for r in rows[anchor < 0] if int(r) not in self._cluster_of]
        if others:
            found = nearest_rows(self._space.x[others], self.centres, 1)[0][:, 0]
            self._cluster_of.update(zip(others, found.tolist()))
        out[anchor < 0] = [self._cluster_of[int(r)] for r in rows[anchor < 0]]
        return out


class TypiClustIndex:
    """TypiClust's picks over a fixed ladder of k-means clusterings of the anchors (see the module docstring).

    Args:
        space: the map's feature space.
        random_state: k-means seed.
        max_clusters: the most clusters (TypiClust's cap, 500).
    """

    name = "typiclust"

    def __init__(self, space: FeatureSpace, random_state: int = 0, max_clusters: int = 500) -> None:
        self.space = space
        counts = [k for k in LADDER if k <= max_clusters and k <= max(1, space.n_anchors)] or [1]
        self.levels = [_Level(space, k, random_state) for k in counts]
        self._lock = threading.Lock()

    def level_for(self, n_clusters: int) -> _Level:
        for level in self.levels:
            if level.n_clusters >= n_clusters:
                return level
        return self.levels[-1]

    def select(self, chosen: Sequence[int], count: int = 1, excluded: np.ndarray | None = None) -> list[OnlinePick]:
        """``count`` picks given the chosen rows (labelled and reserved) and rows that must not be picked
        (``excluded``, sorted)."""
        chosen_arr = np.unique(np.asarray(chosen, dtype=np.int64))
        level = self.level_for(len(chosen_arr) + count)
        with self._lock:
            clusters = level.clusters_of(chosen_arr)
        covered = np.bincount(clusters, minlength=level.n_clusters)
        taken = set(chosen_arr.tolist())
        blocked = excluded if excluded is not None and len(excluded) else None
        full = np.zeros(level.n_clusters, dtype=bool)
        share = len(self.space) / max(1, self.space.n_anchors)
        picks: list[OnlinePick] = []
        while len(picks) < count:
            order = np.lexsort((np.arange(level.n_clusters), -level.sizes, covered))
            pick = None
            for c in order[~full[order]]:
                pick = next((int(r) for r in level.by_typicality[c].tolist()
                             if r not in taken and (blocked is None or not _contains(blocked, r))), None)
                if pick is not None:
                    break
                full[c] = True
            if pick is None:
                break  # every anchor is chosen or excluded
            c = int(level.clusters_of(np.asarray([pick]))[0])
            picks.append(OnlinePick(pick, f"the most typical slice of the largest cluster of W with "
                                          f"{'no' if covered[c] == 0 else 'the fewest'} labelled or suggested slices "
                                          f"(about {level.sizes[c] * share:.0f} slices, cluster {c + 1} of "
                                          f"{level.n_clusters})"))
            taken.add(pick)
            covered[c] += 1
        return picks


def _contains(sorted_rows: np.ndarray, row: int) -> bool:
    i = int(np.searchsorted(sorted_rows, row))
    return i < len(sorted_rows) and int(sorted_rows[i]) == row


class CoverageIndex:
    """ProbCover's greedy coverage over the anchors, with the coverage kept between calls.

    Args:
        space: the map's feature space.
        n_classes: k-means clusters of the purity rule (the number of classes).
        purity: share of pure balls δ keeps (ProbCover's 0.95).
        max_neighbours: most anchors per ball.
    """

    name = "probcover"

    def __init__(self, space: FeatureSpace, n_classes: int = 2, purity: float = 0.95, random_state: int = 0,
                 max_neighbours: int = 200) -> None:
        self.space = space
        anchors = space.anchor_x
        self.radius = purity_radius(anchors, n_classes, purity, random_state) if len(anchors) > 2 else 1.0
        index, dist = nearest_rows(anchors, anchors, max_neighbours)
        inside = dist < self.radius
        self.ptr = np.concatenate([[0], np.cumsum(inside.sum(axis=1))]).astype(np.int64)
        self.members = index[inside].astype(np.int32)             # anchor a's ball: members[ptr[a]:ptr[a+1]]
        holders = np.repeat(np.arange(len(anchors), dtype=np.int32), np.diff(self.ptr))
        order = np.argsort(self.members, kind="stable")           # the reverse: which balls hold anchor b
        self.rptr = np.concatenate([[0], np.cumsum(np.bincount(self.members, minlength=len(anchors)))]).astype(np.int64)
        self.holders = holders[order]
        self.cover = np.zeros(len(anchors), dtype=np.int32)        # chosen balls covering each anchor
        self.gain = np.diff(self.ptr).astype(np.int64)            # uncovered anchors in each ball
        self.centres: set[int] = set()
        self.taken = np.zeros(len(anchors), dtype=bool)            # anchors that are chosen slices
        self.rng_seed = random_state
        self.max_neighbours = max_neighbours
        self._balls: dict[int, np.ndarray] = {}

    def ball_of(self, row: int) -> np.ndarray:
        """The anchors a chosen slice covers (an anchor's own ball; another slice's found once and kept)."""
        a = int(self.space.anchor_of[row])
        if a >= 0:
            return self.members[self.ptr[a]:self.ptr[a + 1]]
        if row not in self._balls:
            index, dist = self.space.nearest_anchors(self.space.x[row:row + 1], self.max_neighbours)
            self._balls[row] = index[0][dist[0] < self.radius]
        return self._balls[row]

    def _apply(self, row: int, sign: int) -> None:
        """Count ``row``'s ball as covering (``sign`` +1) or no longer (-1); the balls holding an anchor that became
        covered (or uncovered) gain one less (or more). Vectorised over the ball and its holders."""
        ball = self.ball_of(row)
        if not len(ball):
            return
        before = self.cover[ball] == 0
        np.add.at(self.cover, ball, sign)
        changed = ball[before != (self.cover[ball] == 0)]
        if len(changed):
            starts, ends = self.rptr[changed], self.rptr[changed + 1]
            lengths = ends - starts
            offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
            holders = self.holders[np.arange(lengths.sum()) + offsets]
            self.gain -= sign * np.bincount(holders, minlength=len(self.gain))
        anchor = int(self.space.anchor_of[row])
        if anchor >= 0:
            self.taken[anchor] = sign > 0

    def sync(self, chosen: Sequence[int]) -> None:
        wanted = set(int(r) for r in chosen)
        for row in self.centres - wanted:
            self._apply(row, -1)
        for row in wanted - self.centres:
            self._apply(row, +1)
        self.centres = wanted

    def select(self, chosen: Sequence[int], count: int = 1, excluded: np.ndarray | None = None) -> list[OnlinePick]:
        self.sync(chosen)
        blocked = np.zeros(len(self.gain), dtype=bool)
        if excluded is not None and len(excluded):
            anchors = self.space.anchor_of[excluded]
            blocked[anchors[anchors >= 0]] = True
        picks: list[OnlinePick] = []
        rng = np.random.default_rng(self.rng_seed + len(self.centres))
        for _ in range(count):
            gain = np.where(self.taken | blocked, -1, self.gain)
            a = int(np.argmax(gain)) if len(gain) else -1
            if a < 0 or gain[a] < 0:
                break
            if gain[a] == 0:  # every anchor covered: the rest at random, as ProbCover does
                a = int(rng.choice(np.flatnonzero(gain == 0)))
                reason = "every anchor is covered by a labelled or suggested slice: a random one"
            else:
                reason = (f"its δ-ball in W (δ = {self.radius:.3g}) covers the most slices not yet covered "
                          f"({int(gain[a])} of {self.n_uncovered()} anchors)")
            row = int(self.space.anchors[a])
            picks.append(OnlinePick(row, reason))
            self._apply(row, +1)
            self.centres.add(row)
        return picks

    def n_uncovered(self) -> int:
        return int(np.count_nonzero(self.cover == 0))
