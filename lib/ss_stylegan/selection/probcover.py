"""ProbCover (Yehuda et al., NeurIPS 2022, arXiv 2205.11320): greedy coverage by δ-balls.

Each pick is the point whose ball of radius δ covers the most points not yet covered. δ is the largest
radius whose balls stay *pure* (their points share a k-means cluster) for at least ``purity`` of the points
(:func:`purity_radius`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from ss_stylegan.selection.features import _chosen


def purity_radius(x: np.ndarray, n_classes: int, purity: float = 0.95, random_state: int = 0,
                  candidates: int = 20) -> float:
    """ProbCover's δ: the largest radius at which at least ``purity`` of the points have a ball holding only
    points of their own k-means cluster (``n_classes`` clusters, the number of classes)."""
    cluster = KMeans(max(2, n_classes), n_init=3, random_state=random_state).fit_predict(x)
    # a ball is pure up to the distance of the nearest point of another cluster
    impure_at = np.full(x.shape[0], np.inf)
    for c in np.unique(cluster):
        others = np.flatnonzero(cluster != c)
        if others.size == 0:
            continue
        dist, _ = NearestNeighbors(n_neighbors=1).fit(x[others]).kneighbors(x[cluster == c])
        impure_at[cluster == c] = dist[:, 0]
    # largest δ with share(impure_at > δ) >= purity: the (1 - purity) quantile of the impurity distances
    radius = float(np.quantile(impure_at[np.isfinite(impure_at)], 1.0 - purity)) if np.isfinite(impure_at).any() \
        else float(np.linalg.norm(x.max(axis=0) - x.min(axis=0)))
    return max(radius, 1e-6)


class ProbCoverSelector:
    """ProbCover: greedily the point whose δ-ball covers the most points not yet covered.

    Args:
        n_classes: classes expected (k-means clusters of the purity rule).
        purity: share of pure balls the radius keeps (the paper's 0.95).
        radius: δ itself (None: from the purity rule).
        max_neighbours: most neighbours kept per point (bounds the graph's memory at scale).
    """

    name = "probcover"

    def __init__(self, n_classes: int = 2, purity: float = 0.95, radius: float | None = None,
                 random_state: int = 0, max_neighbours: int = 200) -> None:
        self.n_classes = n_classes
        self.purity = purity
        self.radius = radius
        self.random_state = random_state
        self.max_neighbours = max_neighbours
        self.radius_: float | None = None

    def select(self, x: np.ndarray, count: int, chosen: Sequence[int] | None = None) -> list[int]:
        chosen_arr = _chosen(chosen)
        count = min(count, x.shape[0] - chosen_arr.size)
        if count <= 0:
            return []
        delta = self.radius if self.radius is not None else purity_radius(
            x, self.n_classes, self.purity, self.random_state)
        self.radius_ = delta
        k = min(self.max_neighbours, x.shape[0])
        dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
        balls = [row[d < delta] for row, d in zip(idx, dist)]  # each point's ball (itself included)
        covered = np.zeros(x.shape[0], dtype=bool)
        for i in chosen_arr:
            covered[balls[i]] = True
        taken = np.zeros(x.shape[0], dtype=bool)
        taken[chosen_arr] = True
        gain = np.array([np.count_nonzero(~covered[b]) for b in balls])
        picks: list[int] = []
        rng = np.random.default_rng(self.random_state)
        while len(picks) < count:
            gain[taken] = -1
            best = int(np.argmax(gain))
            if gain[best] <= 0:  # everything covered: the rest at random, as the paper does
                best = int(rng.choice(np.flatnonzero(~taken)))
            picks.append(best)
            taken[best] = True
            newly = balls[best][~covered[balls[best]]]
            covered[newly] = True
            if newly.size:  # every ball holding a newly covered point gains less
                for j in np.flatnonzero(~taken):
                    if gain[j] > 0:
                        gain[j] = np.count_nonzero(~covered[balls[j]])
        return picks
